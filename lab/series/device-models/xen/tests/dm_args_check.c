/*
 * Prints the QEMU command line libxl builds for each device model of a few
 * guests (patch 0002's libxl__build_device_model_args_new), without a Xen
 * host: this file includes libxl_dm.c itself and is built in the tools
 * tree's tools/libs/light (see tests/README in ../README.md), linked
 * against libxenlight_test.so for the rest of libxl.
 */
#include "libxl_dm.c"

static void nic(libxl_device_nic *n, int devid, const char *id)
{
    libxl_device_nic_init(n);
    n->devid = devid;
    n->nictype = LIBXL_NIC_TYPE_VIF_IOEMU;
    n->model = strdup("e1000");
    n->bridge = strdup("xenbr0");
    n->mac[0] = 0x00; n->mac[1] = 0x16; n->mac[2] = 0x3e; n->mac[5] = devid;
    n->id = id ? strdup(id) : NULL;
}

static void model(libxl_device_model_info *m, const char *name,
                  const char *flags, const char *vifs)
{
    libxl_device_model_info_init(m);
    m->name = strdup(name);
    m->ui = !!strstr(flags, "ui");
    m->ide = !!strstr(flags, "ide");
    m->serial = !!strstr(flags, "serial");
    m->audio = !!strstr(flags, "audio");
    if (vifs) {
        m->vifs = calloc(3, sizeof(char *));
        m->vifs[0] = strdup(vifs);
        if (strchr(m->vifs[0], ';')) {
            *strchr(m->vifs[0], ';') = 0;
            m->vifs[1] = strdup(vifs + strlen(m->vifs[0]) + 1);
        }
    }
}

static void guest(libxl_domain_config *dc, int nnics, int usbversion,
                  const char *soundhw, bool ahci)
{
    libxl_domain_build_info *b = &dc->b_info;
    int i;

    libxl_domain_config_init(dc);
    dc->c_info.type = LIBXL_DOMAIN_TYPE_HVM;
    dc->c_info.name = strdup("g1");
    libxl_domain_build_info_init_type(b, LIBXL_DOMAIN_TYPE_HVM);
    b->device_model_version = LIBXL_DEVICE_MODEL_VERSION_QEMU_XEN;
    libxl_defbool_set(&b->device_model_stubdomain, false);
    libxl_defbool_set(&b->dm_restrict, false);
    libxl_defbool_set(&b->acpi, true);
    libxl_defbool_set(&b->u.hvm.acpi, true);
    libxl_defbool_set(&b->u.hvm.xen_platform_pci, true);
    libxl_defbool_set(&b->u.hvm.nographic, false);
    libxl_defbool_set(&b->u.hvm.spice.enable, false);
    libxl_defbool_set(&b->u.hvm.usb, false);
    libxl_defbool_set(&b->u.hvm.gfx_passthru, false);
    libxl_defbool_set(&b->u.hvm.vnc.enable, true);
    libxl_defbool_set(&b->u.hvm.vnc.findunused, true);
    libxl_defbool_set(&b->u.hvm.sdl.enable, false);
    b->u.hvm.vga.kind = LIBXL_VGA_INTERFACE_TYPE_CIRRUS;
    b->u.hvm.hdtype = ahci ? LIBXL_HDTYPE_AHCI : LIBXL_HDTYPE_IDE;
    b->u.hvm.usbversion = usbversion;
    b->u.hvm.serial = strdup("pty");
    b->u.hvm.soundhw = soundhw ? strdup(soundhw) : NULL;
    b->u.hvm.vendor_device = LIBXL_VENDOR_DEVICE_NONE;
    b->video_memkb = 8192;
    b->max_memkb = 262144 + 8192;
    b->max_vcpus = 2;
    dc->nics = calloc(nnics, sizeof(*dc->nics));
    dc->num_nics = nnics;
    for (i = 0; i < nnics; i++) {
        char id[8];
        snprintf(id, sizeof(id), "nic%d", i + 1);
        nic(&dc->nics[i], i, id);
    }
    dc->disks = calloc(1, sizeof(*dc->disks));
    dc->num_disks = 1;
    libxl_device_disk_init(&dc->disks[0]);
    dc->disks[0].vdev = strdup("hda");
    dc->disks[0].pdev_path = strdup("/var/lib/xen/images/g1.img");
    dc->disks[0].format = LIBXL_DISK_FORMAT_RAW;
    dc->disks[0].backend = LIBXL_DISK_BACKEND_QDISK;
    dc->disks[0].readwrite = 1;
    libxl_defbool_set(&dc->disks[0].colo_enable, false);
}

static void show(libxl__gc *gc, const char *title, libxl_domain_config *dc)
{
    int n = dc->b_info.u.hvm.num_device_models, i;
    libxl__domain_build_state state;

    printf("=== %s\n", title);
    for (i = n ? 0 : -1; i < (n ? n : 0); i++) {
        char **args, **envs, **a;
        int fd = -1, rc;

        memset(&state, 0, sizeof(state));
        state.dm_monitor_fd = -1;
        rc = libxl__build_device_model_args_new(gc, "/usr/libexec/xen-qemu-system-i386",
                                                5, dc, &args, &envs, &state,
                                                &fd, i);
        printf("--- model %d%s rc=%d\n", i, i < 0 ? " (unsplit)" : "", rc);
        if (rc) continue;
        for (a = args; *a; a++)
            printf("%s%s", a == args ? "" : " ", *a);
        printf("\n");
    }
    printf("--- validate rc=%d\n", libxl__dm_split_validate(gc, dc, 5));
}

int main(void)
{
    libxl_ctx *ctx = calloc(1, sizeof(*ctx));
    libxl_domain_config dc;

    ctx->lg = (xentoollog_logger *)xtl_createlogger_stdiostream(stderr,
                                                         XTL_ERROR, 0);
    GC_INIT(ctx);

    guest(&dc, 1, 0, NULL, false);
    show(gc, "unsplit guest (must be today's command line)", &dc);

    guest(&dc, 1, 0, "hda", false);
    dc.b_info.u.hvm.device_models = calloc(2, sizeof(libxl_device_model_info));
    dc.b_info.u.hvm.num_device_models = 2;
    model(&dc.b_info.u.hvm.device_models[0], "qnet", "", "nic1");
    model(&dc.b_info.u.hvm.device_models[1], "qall", "ui,ide,serial,audio", NULL);
    show(gc, "qnet+qall (contract example, soundhw=hda)", &dc);

    guest(&dc, 2, 1, "ac97", true);
    dc.b_info.u.hvm.device_models = calloc(5, sizeof(libxl_device_model_info));
    dc.b_info.u.hvm.num_device_models = 5;
    model(&dc.b_info.u.hvm.device_models[0], "qnet1", "", "nic1");
    model(&dc.b_info.u.hvm.device_models[1], "qaudio", "audio", NULL);
    model(&dc.b_info.u.hvm.device_models[2], "qide", "ide", NULL);
    model(&dc.b_info.u.hvm.device_models[3], "qserial", "serial", "nic2");
    model(&dc.b_info.u.hvm.device_models[4], "qui", "ui", NULL);
    show(gc, "five models, two NICs, usbversion=1, ac97, AHCI", &dc);

    guest(&dc, 2, 0, NULL, false);
    dc.b_info.u.hvm.device_models = calloc(2, sizeof(libxl_device_model_info));
    dc.b_info.u.hvm.num_device_models = 2;
    model(&dc.b_info.u.hvm.device_models[0], "qnets", "ide", "nic1;nic2");
    model(&dc.b_info.u.hvm.device_models[1], "qnets", "serial,ide", NULL);
    show(gc, "refused: same name, ide twice, no ui", &dc);

    GC_FREE;
    return 0;
}
