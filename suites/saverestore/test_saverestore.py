"""Save/restore, OSSTest's recipe: guest up, xl save, guest gone, xl restore,
guest answers with uptime continued, data intact, the same PCI topology and
server ownership, every model running; then several cycles in a row.

A cycle that passes proves the restored guest whole, so each test hands its
guest on (``returns_whole_guest``): the second test continues on the first
one's guest instead of booting its own."""
import pytest

from xenhil.harness.checks.saverestore import save_restore_cycle


@pytest.mark.disruptive(returns_whole_guest=True)
def test_save_restore_keeps_the_guest_whole(guest, model_logs):
    save_restore_cycle(guest, model_logs=model_logs)


@pytest.mark.disruptive(returns_whole_guest=True)
def test_repeated_save_restore_cycles(request, guest, model_logs):
    cycles = request.config.getoption("--saverestore-cycles")
    for _ in range(cycles):
        save_restore_cycle(guest, model_logs=model_logs, inspect_savefile=False)
    guest.leak_check(past_only=True)  # the domains of the earlier cycles left nothing behind
