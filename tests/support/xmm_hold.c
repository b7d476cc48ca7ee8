/* Does a process keep its vector registers while it is descheduled?
 *
 * Loads a fresh random pattern into xmm0-15, spins in an integer-only loop
 * (long enough to be preempted by Linux or by Xen), stores the registers and
 * compares.  Prints one line per round that came back changed and a summary
 * "done pid P rounds R bad B"; exits 1 when any round was bad.
 *
 * Run in dom0 while an HVM guest runs (tests/test_xen_layer_real.py): with
 * Xen's lazy FPU switching under the virtual lab's TCG, hundreds of rounds
 * came back with every register replaced (harness/lab/virtual/quirks.py).
 *
 *     xmm_hold [SECONDS [SPINS]]
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void hold(const uint8_t in[256], uint8_t out[256], long spins)
{
    long n = spins;
    __asm__ volatile(
        "movdqu 0(%1),%%xmm0\n movdqu 16(%1),%%xmm1\n movdqu 32(%1),%%xmm2\n movdqu 48(%1),%%xmm3\n"
        "movdqu 64(%1),%%xmm4\n movdqu 80(%1),%%xmm5\n movdqu 96(%1),%%xmm6\n movdqu 112(%1),%%xmm7\n"
        "movdqu 128(%1),%%xmm8\n movdqu 144(%1),%%xmm9\n movdqu 160(%1),%%xmm10\n movdqu 176(%1),%%xmm11\n"
        "movdqu 192(%1),%%xmm12\n movdqu 208(%1),%%xmm13\n movdqu 224(%1),%%xmm14\n movdqu 240(%1),%%xmm15\n"
        "1: dec %0\n jnz 1b\n"
        "movdqu %%xmm0,0(%2)\n movdqu %%xmm1,16(%2)\n movdqu %%xmm2,32(%2)\n movdqu %%xmm3,48(%2)\n"
        "movdqu %%xmm4,64(%2)\n movdqu %%xmm5,80(%2)\n movdqu %%xmm6,96(%2)\n movdqu %%xmm7,112(%2)\n"
        "movdqu %%xmm8,128(%2)\n movdqu %%xmm9,144(%2)\n movdqu %%xmm10,160(%2)\n movdqu %%xmm11,176(%2)\n"
        "movdqu %%xmm12,192(%2)\n movdqu %%xmm13,208(%2)\n movdqu %%xmm14,224(%2)\n movdqu %%xmm15,240(%2)\n"
        : "+r"(n) : "r"(in), "r"(out)
        : "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7",
          "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
}

int main(int argc, char **argv)
{
    int seconds = argc > 1 ? atoi(argv[1]) : 60;
    long spins = argc > 2 ? atol(argv[2]) : 2000000;
    uint8_t in[256], out[256];
    long rounds = 0, bad = 0;
    time_t end = time(NULL) + seconds;
    uint32_t seed = (uint32_t)getpid() * 2654435761u;

    if (seconds <= 0 || spins <= 0) {
        fprintf(stderr, "usage: xmm_hold [SECONDS [SPINS]] (both > 0)\n");
        return 2;
    }
    while (time(NULL) < end) {
        for (int i = 0; i < 256; i++) {
            seed = seed * 1103515245u + 12345u;
            in[i] = seed >> 24;
        }
        memset(out, 0, sizeof out);
        hold(in, out, spins);
        rounds++;
        if (memcmp(in, out, sizeof in) != 0) {
            int regs = 0, first = -1;
            for (int r = 0; r < 16; r++) {
                if (memcmp(in + 16 * r, out + 16 * r, 16) != 0) {
                    regs++;
                    if (first < 0)
                        first = r;
                }
            }
            bad++;
            printf("changed round %ld: %d registers, first xmm%d\n", rounds, regs, first);
            fflush(stdout);
        }
    }
    printf("done pid %d rounds %ld bad %ld\n", (int)getpid(), rounds, bad);
    return bad ? 1 : 0;
}
