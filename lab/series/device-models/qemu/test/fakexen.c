/*
 * fakexen: an LD_PRELOAD stand-in for the Xen libraries QEMU links
 * against (xenctrl, xendevicemodel, xenforeignmemory, xenevtchn,
 * xenstore, xengnttab, xentoolcore), so that xen-qemu-system-i386 can run
 * its Xen machine set-up on a host without Xen and show what it would
 * register with Xen.  Every ioreq-server call, guest-memory population
 * and xenstore write is printed on stderr as a "fakexen:" line; guest
 * memory is anonymous memory.  A test aid only: no guest ever runs.
 *
 *   cc -shared -fPIC -o fakexen.so fakexen.c
 *   LD_PRELOAD=./fakexen.so FAKEXEN_SERVER_ID=1 xen-qemu-system-i386 ...
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096UL

static void say(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    fputs("fakexen: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static void *handle(void)
{
    return malloc(16);
}

static int idle_fd(void)
{
    int fds[2];

    if (pipe(fds)) {
        return -1;
    }
    return fds[0];      /* never readable: the write end stays open */
}

static void *pages(size_t n)
{
    void *p = mmap(NULL, n * PAGE, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

/* xenctrl */
void *xc_interface_open(void *l, void *dl, unsigned f) { return handle(); }
int xc_interface_close(void *xch) { return 0; }
int xc_get_hvm_param(void *xch, uint32_t d, int p, unsigned long *v) { errno = ENOSYS; return -1; }
int xc_hvm_param_get(void *xch, uint32_t d, uint32_t p, uint64_t *v) { errno = ENOSYS; return -1; }
int xc_set_hvm_param(void *xch, uint32_t d, int p, unsigned long v) { return 0; }
int xc_domain_shutdown(void *xch, uint32_t d, int r) { say("domain_shutdown %d", r); return 0; }
int xc_domain_populate_physmap_exact(void *xch, uint32_t d, unsigned long nr,
                                     unsigned int order, unsigned int flags,
                                     uint64_t *pfns)
{
    say("populate_physmap gfn 0x%lx..0x%lx (%lu pages)", (unsigned long)pfns[0],
        (unsigned long)pfns[nr - 1], nr);
    return 0;
}

/* xendevicemodel */
void *xendevicemodel_open(void *l, unsigned f) { return handle(); }
int xendevicemodel_close(void *h) { return 0; }
int xendevicemodel_create_ioreq_server(void *h, uint16_t d, int bufioreq, uint16_t *id)
{
    const char *s = getenv("FAKEXEN_SERVER_ID");

    *id = s ? atoi(s) : 1;
    say("create_ioreq_server -> id %u", *id);
    return 0;
}
int xendevicemodel_get_ioreq_server_info(void *h, uint16_t d, uint16_t id,
                                         uint64_t *ioreq_gfn, uint64_t *bufioreq_gfn,
                                         uint32_t *bufioreq_port)
{
    if (ioreq_gfn) *ioreq_gfn = 0xfeff0;
    if (bufioreq_gfn) *bufioreq_gfn = 0xfeff1;
    if (bufioreq_port) *bufioreq_port = 99;
    return 0;
}
int xendevicemodel_set_ioreq_server_state(void *h, uint16_t d, uint16_t id, int en)
{
    say("set_ioreq_server_state id %u %s", id, en ? "enabled" : "disabled");
    return 0;
}
int xendevicemodel_destroy_ioreq_server(void *h, uint16_t d, uint16_t id)
{
    say("destroy_ioreq_server id %u", id);
    return 0;
}
int xendevicemodel_map_io_range_to_ioreq_server(void *h, uint16_t d, uint16_t id,
                                                int is_mmio, uint64_t s, uint64_t e)
{
    say("map id %u %s 0x%lx-0x%lx", id, is_mmio ? "memory" : "port",
        (unsigned long)s, (unsigned long)e);
    return 0;
}
int xendevicemodel_unmap_io_range_from_ioreq_server(void *h, uint16_t d, uint16_t id,
                                                    int is_mmio, uint64_t s, uint64_t e)
{
    say("unmap id %u %s 0x%lx-0x%lx", id, is_mmio ? "memory" : "port",
        (unsigned long)s, (unsigned long)e);
    return 0;
}
int xendevicemodel_map_pcidev_to_ioreq_server(void *h, uint16_t d, uint16_t id,
                                              uint16_t seg, uint8_t bus, uint8_t dev,
                                              uint8_t fn)
{
    say("map id %u pci %02x:%02x.%u", id, bus, dev, fn);
    return 0;
}
int xendevicemodel_unmap_pcidev_from_ioreq_server(void *h, uint16_t d, uint16_t id,
                                                  uint16_t seg, uint8_t bus, uint8_t dev,
                                                  uint8_t fn)
{
    say("unmap id %u pci %02x:%02x.%u", id, bus, dev, fn);
    return 0;
}
int xendevicemodel_set_isa_irq_level(void *h, uint16_t d, uint8_t irq, unsigned l) { return 0; }
int xendevicemodel_set_pci_intx_level(void *h, uint16_t d, uint16_t s, uint8_t b,
                                      uint8_t dev, uint8_t intx, unsigned l) { return 0; }
int xendevicemodel_set_pci_link_route(void *h, uint16_t d, uint8_t link, uint8_t irq) { return 0; }
int xendevicemodel_inject_msi(void *h, uint16_t d, uint64_t a, uint32_t v) { return 0; }
int xendevicemodel_modified_memory(void *h, uint16_t d, uint64_t f, uint32_t n) { return 0; }
int xendevicemodel_pin_memory_cacheattr(void *h, uint16_t d, uint64_t s, uint64_t e, uint32_t t) { return 0; }
int xendevicemodel_relocate_memory(void *h, uint16_t d, uint32_t n, uint64_t s, uint64_t t)
{
    say("relocate_memory %u pages gfn 0x%lx -> 0x%lx", n, (unsigned long)s, (unsigned long)t);
    return 0;
}
int xendevicemodel_set_mem_type(void *h, uint16_t d, int t, uint64_t f, uint32_t n) { return 0; }
int xendevicemodel_track_dirty_vram(void *h, uint16_t d, uint64_t f, uint32_t n,
                                    unsigned long *bm) { errno = ENODATA; return -1; }
int xendevicemodel_shutdown(void *h, uint16_t d, unsigned r) { say("shutdown %u", r); return 0; }

/* xenforeignmemory */
void *xenforeignmemory_open(void *l, unsigned f) { return handle(); }
int xenforeignmemory_close(void *h) { return 0; }
void *xenforeignmemory_map2(void *h, uint32_t d, void *addr, int prot, int flags,
                            size_t n, const uint64_t arr[], int err[])
{
    if (err) {
        memset(err, 0, n * sizeof(int));
    }
    return pages(n);
}
void *xenforeignmemory_map(void *h, uint32_t d, int prot, size_t n,
                           const uint64_t arr[], int err[])
{
    return xenforeignmemory_map2(h, d, NULL, prot, 0, n, arr, err);
}
int xenforeignmemory_unmap(void *h, void *addr, size_t n) { return munmap(addr, n * PAGE); }
void *xenforeignmemory_map_resource(void *h, uint32_t d, unsigned type, unsigned id,
                                    unsigned long frame, unsigned long nr,
                                    void **paddr, int prot, int flags)
{
    *paddr = pages(nr);
    return *paddr ? handle() : NULL;
}
int xenforeignmemory_unmap_resource(void *h, void *fres) { return 0; }

/* xenevtchn */
static int next_port = 100;
void *xenevtchn_open(void *l, unsigned f) { return handle(); }
int xenevtchn_close(void *h) { return 0; }
int xenevtchn_fd(void *h) { static int fd = -1; if (fd < 0) fd = idle_fd(); return fd; }
int xenevtchn_bind_interdomain(void *h, uint32_t d, uint32_t p) { return next_port++; }
int xenevtchn_unbind(void *h, uint32_t p) { return 0; }
int xenevtchn_notify(void *h, uint32_t p) { return 0; }
int xenevtchn_pending(void *h) { return -1; }
int xenevtchn_unmask(void *h, uint32_t p) { return 0; }

/* xengnttab */
void *xengnttab_open(void *l, unsigned f) { return handle(); }
int xengnttab_close(void *h) { return 0; }
int xengnttab_set_max_grants(void *h, uint32_t n) { return 0; }
int xengnttab_grant_copy(void *h, uint32_t n, void *segs) { return 0; }
void *xengnttab_map_domain_grant_refs(void *h, uint32_t c, uint32_t d, uint32_t *r, int p) { return NULL; }
int xengnttab_unmap(void *h, void *a, uint32_t c) { return 0; }

/* xentoolcore */
int xentoolcore_restrict_all(uint32_t d) { return 0; }

/* xenstore */
void *xs_open(unsigned long f) { return handle(); }
void *xs_daemon_open(void) { return handle(); }
void xs_close(void *h) { }
void xs_daemon_close(void *h) { }
int xs_fileno(void *h) { static int fd = -1; if (fd < 0) fd = idle_fd(); return fd; }
bool xs_write(void *h, uint32_t t, const char *path, const void *data, unsigned int len)
{
    say("xs_write %s = \"%.*s\"", path, (int)len, (const char *)data);
    return true;
}
void *xs_read(void *h, uint32_t t, const char *path, unsigned int *len) { errno = ENOENT; return NULL; }
char **xs_directory(void *h, uint32_t t, const char *path, unsigned int *num)
{
    *num = 0;
    errno = ENOENT;
    return NULL;
}
bool xs_mkdir(void *h, uint32_t t, const char *path) { return true; }
bool xs_rm(void *h, uint32_t t, const char *path) { return true; }
bool xs_set_permissions(void *h, uint32_t t, const char *path, void *p, unsigned int n) { return true; }
bool xs_watch(void *h, const char *path, const char *token)
{
    say("xs_watch %s", path);
    return true;
}
bool xs_unwatch(void *h, const char *path, const char *token) { return true; }
char **xs_check_watch(void *h) { return NULL; }
char **xs_read_watch(void *h, unsigned int *num) { *num = 0; return NULL; }
char *xs_get_domain_path(void *h, unsigned int domid)
{
    char *p;

    return asprintf(&p, "/local/domain/%u", domid) < 0 ? NULL : p;
}
uint32_t xs_transaction_start(void *h) { return 1; }
bool xs_transaction_end(void *h, uint32_t t, bool abort) { return true; }
