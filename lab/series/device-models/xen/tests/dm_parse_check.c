/*
 * Runs xl's device_models parser (libxlutil's xlu_device_model_parse and
 * xlu_device_models_check, as xl's parse_config_data calls them) on a
 * config file without a Xen host, and prints the parsed models as JSON.
 *
 * Test-only config keys describe the guest the split is checked against:
 *   test_vifs = [ 'nic1', 'nic2' ]   ids of ioemu vifs (default: none)
 *   test_serial = 1, test_disks = N, test_soundhw = 'hda'
 *
 * Exit 0: accepted (JSON on stdout); 1: refused (messages on stderr);
 * 2: usage or config syntax error.
 *
 * Build against a built tools tree T:
 *   gcc -I$T/tools/include dm_parse_check.c -L$T/tools/libs/util \
 *       -L$T/tools/libs/light -lxlutil -lxenlight -o dm_parse_check
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <libxl.h>
#include <libxlutil.h>

int main(int argc, char **argv)
{
    XLU_Config *cfg;
    XLU_ConfigList *list;
    libxl_domain_config dc;
    libxl_domain_build_info *b;
    const char *s;
    long l;
    int n, i, k, rc, errors = 0;

    if (argc != 2) {
        fprintf(stderr, "usage: %s CONFIG\n", argv[0]);
        return 2;
    }
    cfg = xlu_cfg_init(stderr, argv[1]);
    if (!cfg || xlu_cfg_readfile(cfg, argv[1]))
        return 2;

    libxl_domain_config_init(&dc);
    b = &dc.b_info;
    libxl_domain_build_info_init_type(b, LIBXL_DOMAIN_TYPE_HVM);

    if (!xlu_cfg_get_list(cfg, "test_vifs", &list, &n, 1)) {
        dc.nics = calloc(n, sizeof(*dc.nics));
        dc.num_nics = n;
        for (i = 0; i < n; i++) {
            libxl_device_nic_init(&dc.nics[i]);
            dc.nics[i].nictype = LIBXL_NIC_TYPE_VIF_IOEMU;
            s = xlu_cfg_get_listitem(list, i);
            dc.nics[i].id = s && *s ? strdup(s) : NULL;
        }
    }
    if (!xlu_cfg_get_long(cfg, "test_serial", &l, 1) && l)
        b->u.hvm.serial = strdup("pty");
    if (!xlu_cfg_get_long(cfg, "test_disks", &l, 1) && l > 0) {
        dc.disks = calloc(l, sizeof(*dc.disks));
        dc.num_disks = l;
        for (i = 0; i < l; i++)
            libxl_device_disk_init(&dc.disks[i]);
    }
    if (!xlu_cfg_get_string(cfg, "test_soundhw", &s, 1))
        b->u.hvm.soundhw = strdup(s);

    /* what xl's parse_device_models() does */
    rc = xlu_cfg_get_list(cfg, "device_models", &list, &n, 1);
    if (rc == ESRCH) {
        printf("{\"device_models\": null}\n");
        return 0;
    }
    if (rc) {
        fprintf(stderr, "device_models must be a list of strings\n");
        return 1;
    }
    if (n == 0) {
        fprintf(stderr, "device_models is an empty list\n");
        return 1;
    }
    if (n > 4 * LIBXL_MAX_DEVICE_MODELS) {
        fprintf(stderr, "too many models\n");
        return 1;
    }
    b->u.hvm.device_models = calloc(n, sizeof(*b->u.hvm.device_models));
    b->u.hvm.num_device_models = n;
    for (i = 0; i < n; i++) {
        libxl_device_model_info_init(&b->u.hvm.device_models[i]);
        if (xlu_device_model_parse(cfg, i, xlu_cfg_get_listitem(list, i),
                                   &b->u.hvm.device_models[i]))
            errors++;
    }
    if (!errors && xlu_device_models_check(cfg, &dc))
        errors++;
    if (errors)
        return 1;

    printf("{\"device_models\": [");
    for (i = 0; i < n; i++) {
        const libxl_device_model_info *m = &b->u.hvm.device_models[i];
        printf("%s{\"name\": %s%s%s, \"path\": %s%s%s, \"ui\": %s, "
               "\"ide\": %s, \"serial\": %s, \"audio\": %s, \"vifs\": [",
               i ? ", " : "",
               m->name ? "\"" : "", m->name ? m->name : "null",
               m->name ? "\"" : "",
               m->path ? "\"" : "", m->path ? m->path : "null",
               m->path ? "\"" : "",
               m->ui ? "true" : "false", m->ide ? "true" : "false",
               m->serial ? "true" : "false", m->audio ? "true" : "false");
        for (k = 0; m->vifs && m->vifs[k]; k++)
            printf("%s\"%s\"", k ? ", " : "", m->vifs[k]);
        printf("]}");
    }
    printf("]}\n");
    libxl_domain_config_dispose(&dc);
    xlu_cfg_destroy(cfg);
    return 0;
}
