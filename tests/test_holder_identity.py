"""Lease holders and run provenance name the user from the operating system
(issue 15): $LOGNAME and $USER are anyone's to set, and releasing a lease
without --force trusts the holder's name."""
from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys

SHOW = ("import json; from xenhil.harness.lab.leases import Holder; from xenhil.harness.lab.model import os_user; "
        "print(json.dumps([Holder.current(run_id='r').user, os_user()]))")


def test_holder_is_the_real_uids_passwd_name_whatever_the_environment_says() -> None:
    env = {**os.environ, "LOGNAME": "mallory", "USER": "mallory", "USERNAME": "mallory"}
    out = subprocess.run([sys.executable, "-c", SHOW], env=env, capture_output=True, text=True,
                         check=True, timeout=60).stdout
    me = pwd.getpwuid(os.getuid()).pw_name
    assert me != "mallory"
    assert json.loads(out) == [me, me]
