/*
 * xhprobe: guest-side I/O probes for xenhil (x86, Linux, run as root).
 *
 * Build: gcc -static -O2 -o xhprobe xhprobe.c
 *
 * Every result is one JSON object per line on stdout (parsed by
 * harness/xen/parsers/probe_output.py); errors are also a JSON line
 * ({"op":"error",...}) plus a message on stderr, and a non-zero exit.
 * Numbers that are addresses or register values are hex strings.
 *
 * --dry-run touches no port and no memory: every read returns all ones, as
 * when no ioreq server claims the access, and writes are dropped.  It exists
 * to test argument parsing and output format on a machine that is not a
 * guest.
 *
 * Timing uses LFENCE;RDTSC on both sides: RDTSCP faults in guests under
 * nested emulation with an emulated TSC (see the facts doc, section 7).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define XHPROBE_VERSION "1"

static int dry_run;
static int io_ready;

static void json_error(const char *cmd, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    int saved = errno;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    /* msg is ours: no quotes or backslashes are put in it */
    printf("{\"op\":\"error\",\"cmd\":\"%s\",\"error\":\"%s\",\"errno\":%d}\n", cmd, msg, saved);
    fflush(stdout);
    fprintf(stderr, "xhprobe %s: %s\n", cmd, msg);
}

static void usage(FILE *f)
{
    fprintf(f,
        "usage: xhprobe [--dry-run] COMMAND ARGS...\n"
        "  inb|inw|inl PORT [COUNT]      read a port COUNT times (default 1)\n"
        "  outb|outw|outl PORT VALUE     write a port\n"
        "  time-in PORT[,PORT...] COUNT [--width 1|2|4] [--raw] [--calib-ms MS]\n"
        "                                cycles of each IN (LFENCE;RDTSC around it);\n"
        "                                several ports are read in turn, COUNT rounds\n"
        "  pci-read BDF REG [WIDTH]      config read via 0xcf8/0xcfc (BDF as 00:01.0)\n"
        "  pci-write BDF REG VALUE [WIDTH]\n"
        "  pci-scan                      every bus-0 function answering on 0xcf8/0xcfc\n"
        "  mmio-read PHYSADDR [WIDTH]    read guest-physical memory via /dev/mem\n"
        "  version\n"
        "Output: one JSON object per line. Numbers in hex strings are addresses/values.\n"
        "--dry-run: touch nothing; reads return all ones (nobody claims the access).\n");
}

static int parse_u64(const char *s, uint64_t *out)
{
    char *end;

    errno = 0;
    *out = strtoull(s, &end, 0);
    return (errno || end == s || *end) ? -1 : 0;
}

static int parse_width(const char *s, unsigned *w)
{
    uint64_t v;

    if (parse_u64(s, &v) || (v != 1 && v != 2 && v != 4 && v != 8))
        return -1;
    *w = (unsigned)v;
    return 0;
}

static uint64_t ones(unsigned width)
{
    return width >= 8 ? ~0ULL : ((1ULL << (8 * width)) - 1);
}

static int io_init(const char *cmd)
{
    if (dry_run || io_ready)
        return 0;
    if (iopl(3) == 0) {
        io_ready = 1;
        return 0;
    }
    /* iopl may be refused (lockdown); ioperm covers ports 0-0x3ff */
    if (ioperm(0, 0x400, 1) == 0) {
        io_ready = 2;
        return 0;
    }
    json_error(cmd, "iopl(3) and ioperm failed: %s (run as root in the guest)", strerror(errno));
    return -1;
}

/* Argument check, before any privilege is asked for: failure exits 2. */
static int port_in_range(const char *cmd, uint64_t port, unsigned width)
{
    if (port > 0xffff || port + width - 1 > 0xffff) {
        errno = EINVAL;
        json_error(cmd, "port 0x%" PRIx64 " out of range", port);
        return 0;
    }
    return 1;
}

/* Run-time check after io_init: failure exits 1. */
static int port_reachable(const char *cmd, uint64_t port, unsigned width)
{
    if (io_ready == 2 && port + width - 1 > 0x3ff) {
        errno = EPERM;
        json_error(cmd, "only ports below 0x400 are reachable without iopl");
        return 0;
    }
    return 1;
}

static inline uint32_t port_in(unsigned width, uint16_t port)
{
    if (dry_run)
        return (uint32_t)ones(width);
    switch (width) {
    case 1: return inb(port);
    case 2: return inw(port);
    default: return inl(port);
    }
}

static inline void port_out(unsigned width, uint16_t port, uint32_t v)
{
    if (dry_run)
        return;
    switch (width) {
    case 1: outb((uint8_t)v, port); break;
    case 2: outw((uint16_t)v, port); break;
    default: outl(v, port); break;
    }
}

static inline uint64_t tsc(void)
{
    uint32_t lo, hi;

    __asm__ __volatile__("lfence\n\trdtsc" : "=a"(lo), "=d"(hi) :: "memory");
    return ((uint64_t)hi << 32) | lo;
}

static unsigned width_of(const char *op)
{
    char c = op[strlen(op) - 1];

    return c == 'b' ? 1 : c == 'w' ? 2 : 4;
}

static int cmd_in(int argc, char **argv)
{
    const char *op = argv[0];
    unsigned width = width_of(op);
    uint64_t port, count = 1, i;

    if (argc < 2 || argc > 3 || parse_u64(argv[1], &port) || (argc == 3 && parse_u64(argv[2], &count))
        || count == 0) {
        errno = EINVAL;
        json_error(op, "usage: %s PORT [COUNT>0]", op);
        return 2;
    }
    if (!port_in_range(op, port, width))
        return 2;
    if (io_init(op) || !port_reachable(op, port, width))
        return 1;
    printf("{\"op\":\"in\",\"width\":%u,\"port\":\"0x%" PRIx64 "\",\"count\":%" PRIu64 ",\"dry_run\":%s,\"values\":[",
           width, port, count, dry_run ? "true" : "false");
    for (i = 0; i < count; i++)
        printf("%s\"0x%x\"", i ? "," : "", port_in(width, (uint16_t)port));
    printf("]}\n");
    return 0;
}

static int cmd_out(int argc, char **argv)
{
    const char *op = argv[0];
    unsigned width = width_of(op);
    uint64_t port, value;

    if (argc != 3 || parse_u64(argv[1], &port) || parse_u64(argv[2], &value) || value > ones(width)) {
        errno = EINVAL;
        json_error(op, "usage: %s PORT VALUE (VALUE fits in %u bytes)", op, width);
        return 2;
    }
    if (!port_in_range(op, port, width))
        return 2;
    if (io_init(op) || !port_reachable(op, port, width))
        return 1;
    port_out(width, (uint16_t)port, (uint32_t)value);
    printf("{\"op\":\"out\",\"width\":%u,\"port\":\"0x%" PRIx64 "\",\"value\":\"0x%" PRIx64 "\",\"dry_run\":%s}\n",
           width, port, value, dry_run ? "true" : "false");
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

/* TSC ticks per second, measured against CLOCK_MONOTONIC_RAW. */
static double tsc_hz_measured(unsigned calib_ms)
{
    struct timespec t0, t1, req = { calib_ms / 1000, (long)(calib_ms % 1000) * 1000000L };
    uint64_t c0, c1;
    double ns;

    clock_gettime(CLOCK_MONOTONIC_RAW, &t0);
    c0 = tsc();
    nanosleep(&req, NULL);
    c1 = tsc();
    clock_gettime(CLOCK_MONOTONIC_RAW, &t1);
    ns = (t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec);
    return ns > 0 ? (double)(c1 - c0) * 1e9 / ns : 0.0;
}

static uint64_t pct(const uint64_t *sorted, uint64_t n, unsigned p)
{
    uint64_t idx = (n * p + 99) / 100;   /* nearest-rank */

    return sorted[idx ? idx - 1 : 0];
}

/* The most ports one time-in interleaves: the baseline and one port per
 * device model of the largest split (five) with room to spare. */
#define TIME_IN_MAX_PORTS 8

/* "0x40,0x64,0x6100" -> ports[]; 0 when it is not 1..TIME_IN_MAX_PORTS numbers. */
static int parse_port_list(const char *s, uint64_t *ports, unsigned *n)
{
    char buf[256], *tok, *save = NULL;

    if (strlen(s) >= sizeof(buf))
        return 0;
    strcpy(buf, s);
    *n = 0;
    for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (*n == TIME_IN_MAX_PORTS || parse_u64(tok, &ports[*n]))
            return 0;
        (*n)++;
    }
    return *n > 0;
}

/*
 * time-in PORT[,PORT...] COUNT: COUNT rounds, each reading every port once in
 * the order given, so that the ports' samples are interleaved in time: a slow
 * window of the machine (an emulated host's scheduling) lands on all of them
 * alike instead of on whichever port happened to be measured then.  Output,
 * per port in the order given: its samples (with --raw, in round order) and
 * its summary line, which names how many ports were interleaved.
 */
static int cmd_time_in(int argc, char **argv)
{
    const char *op = "time-in";
    uint64_t ports[TIME_IN_MAX_PORTS], count, i, v;
    unsigned width = 1, calib_ms = 100, nports = 0, p;
    int raw = 0, a;
    uint64_t *samples;
    uint32_t last[TIME_IN_MAX_PORTS] = { 0 };
    double hz;

    if (argc < 3 || !parse_port_list(argv[1], ports, &nports) || parse_u64(argv[2], &count)
        || count == 0 || count > 10000000ULL)
        goto bad;
    for (a = 3; a < argc; a++) {
        if (!strcmp(argv[a], "--raw"))
            raw = 1;
        else if (!strcmp(argv[a], "--width") && a + 1 < argc && !parse_width(argv[a + 1], &width)
                 && width <= 4)
            a++;
        else if (!strcmp(argv[a], "--calib-ms") && a + 1 < argc && !parse_u64(argv[a + 1], &v)
                 && v > 0 && v <= 10000) {
            calib_ms = (unsigned)v;
            a++;
        } else
            goto bad;
    }
    for (p = 0; p < nports; p++)
        if (!port_in_range(op, ports[p], width))
            return 2;
    if (io_init(op))
        return 1;
    for (p = 0; p < nports; p++)
        if (!port_reachable(op, ports[p], width))
            return 1;
    samples = malloc(count * nports * sizeof(*samples));
    if (!samples) {
        json_error(op, "cannot allocate %" PRIu64 " samples", count * nports);
        return 1;
    }
    /* samples[p * count + i]: port p's sample of round i */
    for (i = 0; i < count; i++)
        for (p = 0; p < nports; p++) {
            uint64_t t0 = tsc();

            last[p] = port_in(width, (uint16_t)ports[p]);
            samples[p * count + i] = tsc() - t0;
        }
    hz = tsc_hz_measured(calib_ms);
    for (p = 0; p < nports; p++) {
        uint64_t *mine = samples + p * count, sum = 0;

        if (raw)
            for (i = 0; i < count; i++)
                printf("{\"op\":\"sample\",\"i\":%" PRIu64 ",\"cycles\":%" PRIu64 "}\n", i, mine[i]);
        for (i = 0; i < count; i++)
            sum += mine[i];
        qsort(mine, count, sizeof(*mine), cmp_u64);
        printf("{\"op\":\"time-in\",\"port\":\"0x%" PRIx64 "\",\"width\":%u,\"n\":%" PRIu64
               ",\"interleaved\":%u,\"tsc_hz\":%.0f,\"tsc_hz_source\":\"clock_monotonic_raw/%ums\""
               ",\"min_cycles\":%" PRIu64 ",\"p50_cycles\":%" PRIu64 ",\"p90_cycles\":%" PRIu64
               ",\"p99_cycles\":%" PRIu64 ",\"max_cycles\":%" PRIu64 ",\"mean_cycles\":%.1f"
               ",\"last_value\":\"0x%x\",\"dry_run\":%s}\n",
               ports[p], width, count, nports, hz, calib_ms, mine[0], pct(mine, count, 50),
               pct(mine, count, 90), pct(mine, count, 99), mine[count - 1], (double)sum / count,
               last[p], dry_run ? "true" : "false");
    }
    free(samples);
    return 0;
bad:
    errno = EINVAL;
    json_error(op, "usage: time-in PORT[,PORT...](at most %d) COUNT(1..1e7) [--width 1|2|4] [--raw] "
               "[--calib-ms 1..10000]", TIME_IN_MAX_PORTS);
    return 2;
}

/* "00:01.0" or "0000:00:01.0" (segment must be 0 for 0xcf8) -> bus<<8|dev<<3|fn */
static int parse_bdf(const char *s, unsigned *bdf)
{
    unsigned seg = 0, bus, dev, fn;
    char tail;

    if (sscanf(s, "%x:%x:%x.%x%c", &seg, &bus, &dev, &fn, &tail) == 4) {
        if (seg)
            return -1;
    } else if (sscanf(s, "%x:%x.%x%c", &bus, &dev, &fn, &tail) != 3)
        return -1;
    if (bus > 0xff || dev > 0x1f || fn > 7)
        return -1;
    *bdf = (bus << 8) | (dev << 3) | fn;
    return 0;
}

static uint32_t cfg_read(unsigned bdf, unsigned reg, unsigned width)
{
    port_out(4, 0xcf8, 0x80000000u | (bdf << 8) | (reg & 0xfc));
    return port_in(width, (uint16_t)(0xcfc + (reg & 3)));
}

static void cfg_write(unsigned bdf, unsigned reg, unsigned width, uint32_t v)
{
    port_out(4, 0xcf8, 0x80000000u | (bdf << 8) | (reg & 0xfc));
    port_out(width, (uint16_t)(0xcfc + (reg & 3)), v);
}

static int cfg_args(const char *op, char **argv, unsigned *bdf, uint64_t *reg, unsigned width)
{
    if (parse_bdf(argv[1], bdf) || parse_u64(argv[2], reg) || *reg > 0xff || width > 4
        || (*reg & (width - 1))) {
        errno = EINVAL;
        json_error(op, "usage: %s BDF(00:01.0, segment 0) REG(0-0xff, aligned to WIDTH) ...", op);
        return -1;
    }
    return 0;
}

static int cmd_pci_read(int argc, char **argv)
{
    const char *op = "pci-read";
    unsigned bdf, width = 4;
    uint64_t reg;

    if (argc < 3 || argc > 4 || (argc == 4 && (parse_width(argv[3], &width) || width > 4))) {
        errno = EINVAL;
        json_error(op, "usage: pci-read BDF REG [WIDTH 1|2|4]");
        return 2;
    }
    if (cfg_args(op, argv, &bdf, &reg, width))
        return 2;
    if (io_init(op))
        return 1;
    printf("{\"op\":\"pci-read\",\"bdf\":\"%02x:%02x.%x\",\"reg\":\"0x%" PRIx64 "\",\"width\":%u,"
           "\"value\":\"0x%x\",\"dry_run\":%s}\n", bdf >> 8, (bdf >> 3) & 0x1f, bdf & 7, reg, width,
           cfg_read(bdf, (unsigned)reg, width), dry_run ? "true" : "false");
    return 0;
}

static int cmd_pci_write(int argc, char **argv)
{
    const char *op = "pci-write";
    unsigned bdf, width = 4;
    uint64_t reg, value;

    if (argc < 4 || argc > 5 || (argc == 5 && parse_width(argv[4], &width))
        || cfg_args(op, argv, &bdf, &reg, width) || parse_u64(argv[3], &value) || value > ones(width)) {
        errno = EINVAL;
        json_error(op, "usage: pci-write BDF REG VALUE [WIDTH]");
        return 2;
    }
    if (io_init(op))
        return 1;
    cfg_write(bdf, (unsigned)reg, width, (uint32_t)value);
    printf("{\"op\":\"pci-write\",\"bdf\":\"%02x:%02x.%x\",\"reg\":\"0x%" PRIx64 "\",\"width\":%u,"
           "\"value\":\"0x%" PRIx64 "\",\"dry_run\":%s}\n", bdf >> 8, (bdf >> 3) & 0x1f, bdf & 7, reg,
           width, value, dry_run ? "true" : "false");
    return 0;
}

static int cmd_pci_scan(int argc, char **argv)
{
    const char *op = "pci-scan";
    unsigned dev, fn, found = 0;

    (void)argv;
    if (argc != 1) {
        errno = EINVAL;
        json_error(op, "usage: pci-scan");
        return 2;
    }
    if (io_init(op))
        return 1;
    /* All eight functions of every slot: with several device models a
     * function may be served by another model than function 0, so the
     * multi-function bit of function 0 is not trusted. */
    for (dev = 0; dev < 32; dev++)
        for (fn = 0; fn < 8; fn++) {
            unsigned bdf = (dev << 3) | fn;
            uint32_t id = cfg_read(bdf, 0x00, 4), cls;

            if ((id & 0xffff) == 0xffff || (id & 0xffff) == 0)
                continue;
            cls = cfg_read(bdf, 0x08, 4);
            printf("{\"op\":\"pci-dev\",\"bdf\":\"00:%02x.%x\",\"vendor\":\"0x%04x\",\"device\":\"0x%04x\","
                   "\"class\":\"0x%04x\",\"prog_if\":\"0x%02x\",\"revision\":\"0x%02x\","
                   "\"header_type\":\"0x%02x\"}\n",
                   dev, fn, id & 0xffff, id >> 16, cls >> 16, (cls >> 8) & 0xff, cls & 0xff,
                   (cfg_read(bdf, 0x0c, 4) >> 16) & 0xff);
            found++;
        }
    printf("{\"op\":\"pci-scan\",\"bus\":0,\"found\":%u,\"dry_run\":%s}\n", found, dry_run ? "true" : "false");
    return 0;
}

static int cmd_mmio_read(int argc, char **argv)
{
    const char *op = "mmio-read";
    uint64_t addr, value;
    unsigned width = 4;
    long page = sysconf(_SC_PAGESIZE);
    void *map;
    volatile uint8_t *p;
    int fd;

    if (argc < 2 || argc > 3 || parse_u64(argv[1], &addr) || (argc == 3 && parse_width(argv[2], &width))
        || (addr & (width - 1))) {
        errno = EINVAL;
        json_error(op, "usage: mmio-read PHYSADDR(aligned to WIDTH) [WIDTH 1|2|4|8]");
        return 2;
    }
    if (dry_run) {
        value = ones(width);
    } else {
        fd = open("/dev/mem", O_RDONLY | O_SYNC);
        if (fd < 0) {
            json_error(op, "open /dev/mem: %s", strerror(errno));
            return 1;
        }
        map = mmap(NULL, (size_t)page, PROT_READ, MAP_SHARED, fd, (off_t)(addr & ~(uint64_t)(page - 1)));
        close(fd);
        if (map == MAP_FAILED) {
            json_error(op, "mmap /dev/mem at 0x%" PRIx64 ": %s", addr, strerror(errno));
            return 1;
        }
        p = (volatile uint8_t *)map + (addr & (uint64_t)(page - 1));
        switch (width) {
        case 1: value = *(volatile uint8_t *)p; break;
        case 2: value = *(volatile uint16_t *)p; break;
        case 4: value = *(volatile uint32_t *)p; break;
        default: value = *(volatile uint64_t *)p; break;
        }
        munmap(map, (size_t)page);
    }
    printf("{\"op\":\"mmio-read\",\"addr\":\"0x%" PRIx64 "\",\"width\":%u,\"value\":\"0x%" PRIx64
           "\",\"dry_run\":%s}\n", addr, width, value, dry_run ? "true" : "false");
    return 0;
}

int main(int argc, char **argv)
{
    const char *cmd;
    int rc;

    setvbuf(stdout, NULL, _IOFBF, 1 << 16);
    argc--, argv++;
    while (argc && argv[0][0] == '-' && argv[0][1] == '-') {
        if (!strcmp(argv[0], "--dry-run"))
            dry_run = 1;
        else if (!strcmp(argv[0], "--help")) {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
        argc--, argv++;
    }
    if (!argc) {
        usage(stderr);
        return 2;
    }
    cmd = argv[0];
    if (!strcmp(cmd, "inb") || !strcmp(cmd, "inw") || !strcmp(cmd, "inl"))
        rc = cmd_in(argc, argv);
    else if (!strcmp(cmd, "outb") || !strcmp(cmd, "outw") || !strcmp(cmd, "outl"))
        rc = cmd_out(argc, argv);
    else if (!strcmp(cmd, "time-in"))
        rc = cmd_time_in(argc, argv);
    else if (!strcmp(cmd, "pci-read"))
        rc = cmd_pci_read(argc, argv);
    else if (!strcmp(cmd, "pci-write"))
        rc = cmd_pci_write(argc, argv);
    else if (!strcmp(cmd, "pci-scan"))
        rc = cmd_pci_scan(argc, argv);
    else if (!strcmp(cmd, "mmio-read"))
        rc = cmd_mmio_read(argc, argv);
    else if (!strcmp(cmd, "version")) {
        printf("{\"op\":\"version\",\"version\":\"" XHPROBE_VERSION "\"}\n");
        rc = 0;
    } else {
        errno = EINVAL;
        json_error("main", "unknown command (try --help)");
        rc = 2;
    }
    fflush(stdout);
    return rc;
}
