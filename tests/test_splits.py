"""The device_models grammar, its validation errors, ownership, the split
catalog and `xenhil split check|list`."""
from __future__ import annotations

import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xenhil.harness.cli.main import main as xenhil
from xenhil.harness.errors import ConfigError
from xenhil.harness.xen import splits
from xenhil.harness.xen.catalog import load_catalog
from xenhil.harness.xen.splits import DeviceModel, Split, SplitError, parse_split
from xenhil.harness.xen.xlconfig import parse_xl_config
from tests.support.libxlutil import INSTALL_HINT, LIBXLUTIL

COVER_LETTER = ["name=qnet,vifs=nic1", "name=qall,ui,ide"]


def problems_of(specs, **kw) -> list[splits.SplitProblem]:
    with pytest.raises(SplitError) as info:
        parse_split(specs, **kw)
    assert isinstance(info.value, ConfigError)  # CLI exit 2, test-bug class
    return info.value.problems


# --------------------------------------------------------------------------
# Malformed splits: input -> fragment of the expected problem
# --------------------------------------------------------------------------

MALFORMED = [
    # (id, specs, keyword arguments, expected message fragment)
    ("empty-list", [], {}, "device_models is an empty list"),
    ("string-not-list", "name=q,ui", {}, "single string, not a list"),
    ("empty-model", ["name=q,ui", ""], {}, "empty model string"),
    ("blank-model", ["   ", "ui"], {}, "empty model string"),
    ("non-string-model", ["ui", 3], {}, "model is not a string but int 3"),
    ("double-comma", ["name=q,,ui"], {}, "empty item"),
    ("leading-comma", [",ui"], {}, "empty item"),
    ("trailing-comma", ["ui,"], {}, "empty item"),
    ("unknown-flag", ["ui,gpu"], {}, "unknown flag 'gpu'"),
    ("misspelt-flag", ["uii"], {}, "did you mean ui?"),
    ("upper-flag", ["name=q,IDE,ui"], {}, "flag 'IDE' must be lower case"),
    ("upper-ui", ["name=q,UI"], {}, "flag 'UI' must be lower case"),
    ("upper-key", ["NAME=q,ui"], {}, "key 'NAME' must be lower case"),
    ("unknown-key", ["name=q,ui,bdf=00:04.0"], {}, "unknown key 'bdf'"),
    ("misspelt-key", ["nmae=q,ui"], {}, "did you mean name=?"),
    ("flag-with-value", ["ui=1"], {}, "flag 'ui' takes no value"),
    ("no-key", ["=q,ui"], {}, "item starts with '='"),
    ("duplicate-flag", ["ui,ide,ui"], {}, "flag 'ui' given twice in one model"),
    ("duplicate-name-key", ["name=a,name=b,ui"], {}, "name= given twice"),
    ("duplicate-vifs-key", ["ui,vifs=nic1,vifs=nic2"], {}, "vifs= given twice"),
    ("empty-name", ["name=,ui"], {}, "name= has an empty value"),
    ("empty-path", ["name=q,ui,path="], {}, "path= has an empty value"),
    ("empty-vifs", ["ui,vifs="], {}, "vifs= has an empty value"),
    ("name-plus", ["name=q+1,ui"], {}, "bad character '+'"),
    ("name-space", ["name=my qemu,ui"], {}, "bad character ' '"),
    ("name-dash-start", ["name=-q,ui"], {}, "bad character '-' at the start"),
    ("name-slash", ["name=../x,ui"], {}, "bad character '.'"),
    ("name-too-long", ["name=" + "q" * 33 + ",ui"], {}, "longer than 32 characters"),
    ("name-unicode", ["name=qé,ui"], {}, "bad character 'é'"),
    ("vif-colon-separator", ["ui", "vifs=nic1:nic2"], {}, "vif id 'nic1:nic2': bad character ':'"),
    ("vif-comma-separator", ["ui,vifs=nic1,nic2"], {}, "looks like a vif id after a ','"),
    ("vif-comma-guest", ["nic2,ui,vifs=nic1"], {"guest_vifs": ["nic1", "nic2"]},
     "looks like a vif id"),
    ("vif-empty-id", ["ui,vifs=nic1;;nic2"], {}, "empty vif id in vifs="),
    ("vif-trailing-sep", ["ui,vifs=nic1;"], {}, "empty vif id in vifs="),
    ("vif-twice-same-model", ["ui,vifs=nic1;nic1"], {}, "listed twice in one model"),
    ("vif-two-models", ["name=a,ui,vifs=nic1", "name=b,vifs=nic1"], {},
     "vif 'nic1' is in model 1 (a) and model 2 (b)"),
    ("vif-not-in-guest", ["ui,vifs=nic9"], {"guest_vifs": ["nic1"]},
     "vif id 'nic9' is not a vif of the guest (its vif ids: nic1)"),
    ("guest-vif-unowned", ["name=a,ui,vifs=nic1"], {"guest_vifs": ["nic1", "nic2"]},
     "the guest's vif 'nic2' is in no model's vifs="),
    ("guest-without-vifs", ["name=a,ui,vifs=nic1"], {"guest_vifs": []},
     "its vif ids: none"),
    ("two-ide", ["name=qa,ui,ide", "name=qb,ide"], {}, "ide is owned by model 1 (qa) and model 2 (qb)"),
    ("three-serial", ["name=a,ui,serial", "name=b,serial", "name=c,serial"], {},
     "serial is owned by model 1 (a) and model 2 (b) and model 3 (c)"),
    ("two-ui-default-names", ["ui", "ui"], {}, "ui is owned by model 1 (0) and model 2 (1)"),
    ("no-ui", ["name=qnet,vifs=nic1", "name=qall,ide"], {},
     "no model owns ui; the root/south bridge would be missing"),
    ("duplicate-names", ["name=q,ui", "name=q,ide"], {}, "name 'q' is also the name of model 1"),
    ("default-name-clash", ["name=1,ui", "ide"], {},
     "name '1' (its default name, the model's number) is also the name of model 1"),
    ("relative-path", ["name=q,ui,path=qemu-wrapper"], {}, "is not absolute"),
    ("path-missing", ["name=q,ui,path=/no/such/qemu"], {"path_exists": lambda p: False},
     "does not exist on the host"),
    ("path-without-name", ["ui,path=/usr/bin/qemu"], {}, "path= without name="),
    ("model-owns-nothing", ["name=q,ui", "name=idle"], {}, "model owns no device class"),
    ("trailing-blank", ["name=q,ui ,ide"], {}, "trailing blank after 'ui'"),
    ("tab", ["name=q,\tui"], {}, "control character '\\t'"),
    ("newline", ["name=q,ui\n"], {}, "control character '\\n'"),
    ("too-many-models", [f"name=q{i},{'ui' if i == 0 else 'vifs=n' + str(i)}" for i in range(9)], {},
     "9 models, but Xen allows at most 8"),
    ("guest-has-serial", ["name=q,ui,ide"], {"guest_classes": ["serial"]},
     "the guest has serial port but no model owns serial"),
    ("guest-has-audio", ["name=q,ui"], {"guest_classes": ["audio", "ide"]},
     "no model owns audio"),
]


@pytest.mark.parametrize("specs,kw,fragment", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_split_is_rejected_with_a_pointed_message(specs, kw, fragment):
    problems = problems_of(specs, **kw)
    messages = [f"{p.message} / fix: {p.fix}" for p in problems]
    assert any(fragment in m for m in messages), messages
    for p in problems:
        assert p.fix, f"problem without a fix: {p}"


def test_at_least_forty_malformed_cases():
    assert len(MALFORMED) >= 40


def test_caret_points_at_the_offending_item():
    (p,) = problems_of(["name=qall,ui,IDE"])
    assert p.model_index == 0
    assert p.model_text[p.start:p.end] == "IDE"
    rendered = p.render()
    quoted, caret = rendered.splitlines()[1:3]
    # the caret sits under the offending text in the quoted model
    assert quoted[caret.index("^"):caret.rindex("^") + 1] == "IDE"
    assert "fix: write ide" in rendered


def test_duplicate_owner_points_at_the_second_claim_and_names_both():
    (p,) = problems_of(["name=qa,ui,ide", "name=qb,audio,ide"])
    assert p.model_index == 1
    assert p.model_text[p.start:p.end] == "ide"
    assert "qa" in p.message and "qb" in p.message


def test_vif_caret_points_at_the_id_inside_vifs():
    (p,) = problems_of(["name=a,ui,vifs=nic1; nic9"], guest_vifs=["nic1"])
    assert p.model_text[p.start:p.end] == "nic9"


def test_all_problems_are_collected_not_just_the_first():
    problems = problems_of(["name=q+,UI,gpu", "name=q2,ide,ide", "name=q3,ide"])
    messages = " | ".join(p.message for p in problems)
    for fragment in ("bad character '+'", "'UI' must be lower case", "unknown flag 'gpu'",
                     "given twice", "ide is owned by"):
        assert fragment in messages
    assert len(problems) >= 5


def test_error_text_names_model_item_and_fix():
    with pytest.raises(SplitError) as info:
        parse_split(["name=qnet,vifs=nic1", "name=qall,ide"], source="suite x")
    text = str(info.value)
    assert "in device_models in suite x" in text
    assert "add ui to one model" in text


def test_misspelt_ui_is_not_also_reported_as_missing():
    problems = problems_of(["name=q,UI,ide"])
    assert [p.message for p in problems] == ["flag 'UI' must be lower case"]


# --------------------------------------------------------------------------
# Good splits and ownership
# --------------------------------------------------------------------------

GOOD = [
    # (specs, guest vifs, split id, expected owners)
    (None, ["nic1"], "single",
     {"ui": "0", "audio": "0", "ide": "0", "serial": "0", "nic:nic1": "0"}),
    (COVER_LETTER, ["nic1"], "qnet+qall",
     {"ui": "qall", "audio": None, "ide": "qall", "serial": None, "nic:nic1": "qnet"}),
    (["name=qide,ide", "name=qall,ui,audio,serial,vifs=nic1"], ["nic1"], "qide+qall",
     {"ui": "qall", "audio": "qall", "ide": "qide", "serial": "qall", "nic:nic1": "qall"}),
    (["ui,ide", "vifs=nic1;nic2"], ["nic1", "nic2"], "0+1",
     {"ui": "0", "audio": None, "ide": "0", "serial": None, "nic:nic1": "1", "nic:nic2": "1"}),
    ([" name=q, ui, vifs=a; b"], ["a", "b"], "q",   # leading blanks are skipped, as xl does
     {"ui": "q", "audio": None, "ide": None, "serial": None, "nic:a": "q", "nic:b": "q"}),
    (["name=qui,ui", "name=qaudio,audio", "name=qide,ide", "name=qserial,serial",
      "name=qnet,vifs=nic1"], ["nic1"], "qui+qaudio+qide+qserial+qnet",
     {"ui": "qui", "audio": "qaudio", "ide": "qide", "serial": "qserial", "nic:nic1": "qnet"}),
    (["name=qall,ui,path=/opt/qemu/bin/qemu-system-i386"], [], "qall",
     {"ui": "qall", "audio": None, "ide": None, "serial": None}),
]


@pytest.mark.parametrize("specs,vifs,split_id,owners", GOOD, ids=[g[2] for g in GOOD])
def test_good_split_ownership(specs, vifs, split_id, owners):
    split = parse_split(specs, guest_vifs=vifs)
    assert split.id == split_id
    assert split.ownership(vifs) == owners
    for cls, owner in owners.items():
        assert split.owner_of(cls) == owner


def test_single_split_is_the_absent_option():
    split = parse_split(None)
    assert split.is_single and split.id == "single"
    assert split.requires == ()
    assert split.to_xl() == ""
    assert split.owner_of("nic:anything") == "0"


def test_split_needs_the_device_models_capability():
    assert parse_split(COVER_LETTER).requires == ("device_models",)


def test_default_names_are_numbers_by_position():
    split = parse_split(["ui", "name=x,ide", "serial"])
    assert [m.name for m in split.models] == ["0", "x", "2"]
    assert [m.name_given for m in split.models] == [False, True, False]


def test_path_is_checked_through_the_callback_or_deferred():
    asked = []
    parse_split(["name=q,ui,path=/opt/qemu"], path_exists=lambda p: asked.append(p) or True)
    assert asked == ["/opt/qemu"]
    # no callback: the check is left to the host
    assert parse_split(["name=q,ui,path=/no/such/qemu"]).models[0].path == "/no/such/qemu"


def test_unknown_device_class_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown device class 'gpu'"):
        parse_split(COVER_LETTER).owner_of("gpu")


def test_model_lookup_by_name():
    split = parse_split(COVER_LETTER)
    assert split.model("qnet").vifs == ("nic1",)
    with pytest.raises(ConfigError, match="no model named 'qx'"):
        split.model("qx")


# --------------------------------------------------------------------------
# Rendering and round trips
# --------------------------------------------------------------------------

def test_render_matches_the_series_syntax():
    assert parse_split(COVER_LETTER).to_xl() == \
        "device_models = [ 'name=qnet,vifs=nic1', 'name=qall,ui,ide' ]"


def test_render_is_canonical_and_round_trips():
    split = parse_split([" vifs=nic2;nic1,name=qnet", "serial,IDE".lower() + ",ui,name=qall"])
    assert split.specs() == ["name=qnet,vifs=nic2;nic1", "name=qall,ui,ide,serial"]
    assert parse_split(split.specs()) == split


def test_render_round_trips_through_xl_syntax_with_quotes_in_path():
    split = parse_split(["name=q,ui,path=/opt/it's \"odd\"/qemu"])
    settings = parse_xl_config(split.to_xl() + "\n")
    assert settings["device_models"] == split.specs()
    assert parse_split(settings["device_models"]) == split


_names = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,8}", fullmatch=True)
_vif_ids = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,8}", fullmatch=True)
_paths = st.text(st.characters(blacklist_characters=",\0", blacklist_categories=("Cc", "Cs", "Zl", "Zp", "Zs")),
                 min_size=1, max_size=20).filter(str.isprintable).map(lambda s: "/" + s)


@st.composite
def valid_splits(draw) -> Split:
    count = draw(st.integers(1, 5))
    names = draw(st.lists(_names, min_size=count, max_size=count, unique=True))
    vif_pool = draw(st.lists(_vif_ids, max_size=6, unique=True))
    owner_of_flag = {f: draw(st.integers(0, count - 1)) for f in splits.FLAGS}
    owner_of_vif = {v: draw(st.integers(0, count - 1)) for v in vif_pool}
    models = []
    for i, name in enumerate(names):
        flags = tuple(f for f in splits.FLAGS if owner_of_flag[f] == i)
        vifs = tuple(v for v in vif_pool if owner_of_vif[v] == i)
        if not flags and not vifs:
            flags = ()
            vifs = (f"own{i}",)
        path = draw(st.none() | _paths)
        models.append(DeviceModel(name=name, flags=flags, vifs=vifs, path=path))
    return Split(tuple(models))


@settings(max_examples=200, deadline=None)
@given(valid_splits())
def test_any_valid_split_round_trips_through_xl(split):
    text = split.to_xl() + "\n"
    back = parse_split(parse_xl_config(text)["device_models"])
    assert back == split
    assert back.id == split.id


@pytest.mark.skipif(LIBXLUTIL is None, reason=f"xl's parser library is missing: {INSTALL_HINT}")
@settings(max_examples=100, deadline=None)
@given(valid_splits())
def test_real_xl_reads_device_models_back(split):
    """xl 4.17's own parser hands the series' code exactly our model strings."""
    read = LIBXLUTIL.read(split.to_xl() + "\n", ["device_models"])["device_models"]
    assert read == split.specs()
    assert parse_split(read) == split


# --------------------------------------------------------------------------
# The catalog
# --------------------------------------------------------------------------

def test_catalog_loads_and_every_entry_is_consistent():
    catalog = load_catalog()
    ids = catalog.ids()
    for needed in ("single", "qnet+qall", "qide+qall", "qserial+qnet+qall",
                   "qui+qaudio+qide+qserial+qnet", "single+probe"):
        assert needed in ids
    for entry in catalog:
        assert set(entry.owners) == set(entry.split.ownership(entry.guest_vifs))
        if entry.id == "single":
            assert entry.requires == ()
        else:
            assert entry.requires  # device_models or probe


def test_catalog_selection_by_host_capabilities():
    catalog = load_catalog()
    debian_417 = {e.id for e in catalog.runnable_on([])}
    assert debian_417 == {"single"}
    series = {e.id for e in catalog.runnable_on(["device_models"])}
    assert "qnet+qall" in series and "single+probe" not in series
    assert catalog.get("single+probe").missing(["device_models"]) == ["probe"]


def test_catalog_unknown_id_is_a_config_error():
    with pytest.raises(ConfigError, match="not in the catalog"):
        load_catalog().get("qfoo+qbar")


def _write_catalog(tmp_path, entry: str):
    path = tmp_path / "splits.yaml"
    path.write_text("version: 1\nsplits:\n" + textwrap.indent(textwrap.dedent(entry), "  "))
    return path


BAD_CATALOG_ENTRIES = [
    ("wrong owner", """\
        - id: qnet+qall
          device_models: ['name=qnet,vifs=nic1', 'name=qall,ui,ide,serial']
          guest_vifs: [nic1]
          requires: [device_models]
          owners: {ui: qall, audio: null, ide: qnet, serial: qall, "nic:nic1": qnet}
        """, "owners.ide says 'qnet' but the device_models give 'qall'"),
    ("wrong id", """\
        - id: qall+qnet
          device_models: ['name=qnet,vifs=nic1', 'name=qall,ui']
          guest_vifs: [nic1]
          requires: [device_models]
          owners: {ui: qall, audio: null, ide: null, serial: null, "nic:nic1": qnet}
        """, "does not match its device_models, which give 'qnet+qall'"),
    ("missing requirement", """\
        - id: qnet+qall
          device_models: ['name=qnet,vifs=nic1', 'name=qall,ui']
          guest_vifs: [nic1]
          requires: []
          owners: {ui: qall, audio: null, ide: null, serial: null, "nic:nic1": qnet}
        """, "requires lacks device_models"),
    ("missing owner", """\
        - id: single
          device_models: null
          guest_vifs: [nic1]
          requires: []
          owners: {ui: "0", audio: "0", ide: "0", serial: "0"}
        """, "owners has no entry for nic:nic1"),
    ("bad split", """\
        - id: qnet+qall
          device_models: ['name=qnet,vifs=nic1', 'name=qall,ide']
          guest_vifs: [nic1]
          requires: [device_models]
          owners: {}
        """, "no model owns ui"),
    ("unknown key", """\
        - id: single
          device_models: null
          guest_vifs: []
          requires: []
          owner: {}
        """, "unknown key(s) owner"),
]


@pytest.mark.parametrize("entry,fragment", [b[1:] for b in BAD_CATALOG_ENTRIES],
                         ids=[b[0] for b in BAD_CATALOG_ENTRIES])
def test_catalog_inconsistency_is_reported_with_file_and_entry(tmp_path, entry, fragment):
    path = _write_catalog(tmp_path, entry)
    with pytest.raises(ConfigError) as info:
        load_catalog(path)
    assert fragment in str(info.value)
    assert str(path) in str(info.value)
    assert "splits[0]" in str(info.value)


PROBE_ENTRY = """\
    - id: single+probe
      device_models: null
      guest_vifs: [nic1]
      requires: [probe]
      probe: {probe}
      owners: {{ui: "0", audio: "0", ide: "0", serial: "0", "nic:nic1": "0"}}
    """


def test_catalog_probe_true_takes_the_default_settings():
    entry = load_catalog().get("single+probe")
    assert entry.probe and entry.requires == ("probe",)
    s = entry.probe_settings
    assert (s.ports, s.mmio, s.bdf, s.vendor, s.device) == (
        ((0x6100, 0x610F),), (0xF0000000, 0xF0000FFF), "00:05.0", 0x5853, 0xC0DE)
    assert (s.id_port, s.scratch_port) == (0x6100, 0x6108)
    assert load_catalog().get("single").probe_settings is None


def test_catalog_probe_mapping_overrides_some_settings(tmp_path):
    path = _write_catalog(tmp_path, PROBE_ENTRY.format(
        probe='{ports: [0x6200-0x620f, 0x6300-0x6303], bdf: "00:06.0", device: "beef"}'))
    s = load_catalog(path).get("single+probe").probe_settings
    assert s.ports == ((0x6200, 0x620F), (0x6300, 0x6303))
    assert (s.bdf, s.vendor, s.device, s.mmio) == ("00:06.0", 0x5853, 0xBEEF, (0xF0000000, 0xF0000FFF))


@pytest.mark.parametrize("probe,fragment", [
    ("{port: [0x6100-0x610f]}", "probe has unknown key(s) port"),
    ("{ports: 0x6100-0x610f}", "probe.ports is not a list of ranges"),
    ("{ports: [0x6100]}", "probe.ports: 24832 is not START-END in hex (YAML read a number)"),
    ("{ports: [6100-610g]}", "probe.ports: '6100-610g' is not START-END in hex"),
    ("{ports: [0x6100-0x10000]}", "is empty or beyond 0xffff"),
    ("{mmio: 0xf0000000-0xf0000aff}", "not a naturally aligned power-of-two window"),
    ("{bdf: 00:40.0}", "probe.bdf: YAML read it as the number 40.0"),
    ('{bdf: "00:40.0"}', "probe.bdf: '00:40.0' is not BUS:DEV.FN"),
    ("{vendor: ffff}", "probe.vendor: 'ffff' is not a 16-bit hex id"),
    ("yes please", "probe is neither true/false nor a mapping"),
], ids=["unknown-key", "ports-not-list", "port-a-number", "port-not-hex", "port-too-high",
        "mmio-unaligned", "bdf-a-yaml-number", "bdf-device-too-high", "vendor-all-ones", "not-bool-or-mapping"])
def test_catalog_bad_probe_settings_name_the_field(tmp_path, probe, fragment):
    path = _write_catalog(tmp_path, PROBE_ENTRY.format(probe=probe))
    with pytest.raises(ConfigError) as info:
        load_catalog(path)
    assert fragment in str(info.value)
    assert "splits[0] (single+probe)" in str(info.value)


# --------------------------------------------------------------------------
# The CLI
# --------------------------------------------------------------------------

def test_cli_check_prints_owners(capsys):
    rc = xenhil(["split", "check", "name=qnet,vifs=nic1", "name=qall,ui,ide", "--vif", "nic1"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "split qnet+qall: 2 models, requires device_models" in out
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[2:7]}
    assert rows == {"ui": "qall", "audio": "-", "ide": "qall", "serial": "-", "nic:nic1": "qnet"}
    assert "device_models = [ 'name=qnet,vifs=nic1', 'name=qall,ui,ide' ]" in out


def test_cli_check_reports_every_problem_and_exits_2(capsys):
    rc = xenhil(["split", "check", "name=qa,ui,ide", "name=qb,ide,vifs=nic1,nic2", "--vif", "nic1"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "ide is owned by model 1 (qa) and model 2 (qb)" in err
    assert "separate several vif ids with ';'" in err


def test_cli_check_guest_device_must_be_owned(capsys):
    rc = xenhil(["split", "check", "name=qall,ui,ide", "--has", "serial"])
    assert rc == 2
    assert "no model owns serial" in capsys.readouterr().err


def test_cli_check_paths_locally(capsys, tmp_path):
    qemu = tmp_path / "qemu"
    qemu.write_text("")
    assert xenhil(["split", "check", f"name=q,ui,path={qemu}", "--check-paths"]) == 0
    assert xenhil(["split", "check", f"name=q,ui,path={tmp_path}/nope", "--check-paths"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_check_without_models_is_the_empty_list_error(capsys):
    assert xenhil(["split", "check"]) == 2
    assert "empty list" in capsys.readouterr().err


def test_cli_list_prints_the_catalog(capsys):
    assert xenhil(["split", "list"]) == 0
    out = capsys.readouterr().out
    assert "qserial+qnet+qall  (requires device_models)" in out
    assert "single+probe  (requires probe)  + probe ioreq server" in out
