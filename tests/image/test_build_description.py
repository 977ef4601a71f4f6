"""One build description: the image is built by image/build and by buildroot/ from the
same two lists, and the files that cannot read them are checked against them here.

- image/slots.conf, the slot protocol (partitions, GRUB environment variables, the
  default environment, the try limits, the kernel argument): sourced by image/build
  and buildroot's post-image.sh, compiled into bootenv; GRUB script (grub.cfg) and
  genimage.cfg cannot read it, so they are checked against it.
- image/programs.txt, the programs the image ships: read by image/build and by the
  Buildroot packages; buildroot's Config.in (Kconfig cannot read it) is checked.

No image is built and nothing runs as root: these tests only read the repository (and
ask bash and cargo how they read it).
"""

import json
import re
import subprocess
from pathlib import Path

TOP = Path(__file__).resolve().parents[2]
IMAGE = TOP / "image"
BUILDROOT = TOP / "buildroot"
SLOTS_CONF = IMAGE / "slots.conf"
PROGRAMS = IMAGE / "programs.txt"
GRUB_CFG = IMAGE / "grub" / "grub.cfg"
GENIMAGE_CFG = IMAGE / "layout" / "genimage.cfg"
IMAGE_BUILD = IMAGE / "build"
POST_IMAGE = BUILDROOT / "board" / "medlb" / "post-image.sh"
MEDLB_MK = BUILDROOT / "package" / "medlb" / "medlb.mk"
BOOTENV_MK = BUILDROOT / "package" / "medlb-bootenv" / "medlb-bootenv.mk"
MEDLB_CONFIG_IN = BUILDROOT / "package" / "medlb" / "Config.in"
BOOTENV_SRC = IMAGE / "bootenv" / "src"

# the lines of slots.conf: KEY=VALUE, VALUE bare (of a few characters bash takes
# literally) or in double quotes (without what bash expands there)
LINE = re.compile(r'^([A-Z][A-Z0-9_]*)=(?:"([^"$\\`]*)"|([A-Za-z0-9_./:@%+,=-]*))$')


def read(path):
    return Path(path).read_text()


def code_of(text, comment="#"):
    """The lines of a script that are not comments."""
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith(comment))


def names(text, word):
    """Whether `text` holds `word` as a whole path or word (not inside a longer path)."""
    return re.search(rf"(?<![\w/.$-]){re.escape(word)}(?![\w/.-])", text) is not None


def slots():
    """slots.conf as a dict, checking every line has the form bash and bootenv read
    alike (bootenv's const parser refuses the same lines)."""
    conf = {}
    for n, line in enumerate(read(SLOTS_CONF).splitlines(), 1):
        if not line or line.startswith("#"):
            continue
        m = LINE.match(line)
        assert m, f"slots.conf:{n}: not KEY=VALUE (bare, or in double quotes): {line!r}"
        conf[m[1]] = m[2] if m[2] is not None else m[3]
    return conf


def slot_names(conf):
    return conf["SLOTS"].split()


def variables(conf):
    return {conf["VAR_BOOT_SLOT"], conf["VAR_GOOD_SLOT"], conf["VAR_BOOT_TRIES"]}


def default_env(conf):
    return dict(w.split("=", 1) for w in conf["DEFAULT_ENV"].split())


def programs():
    """programs.txt: (name, path, from, buildroot option, [links]) per line."""
    rows = []
    for n, raw in enumerate(read(PROGRAMS).splitlines(), 1):
        fields = raw.split("#", 1)[0].split()
        if not fields:
            continue
        assert len(fields) >= 4, f"programs.txt:{n}: NAME PATH FROM BUILDROOT [LINK...]: {raw!r}"
        name, path, src, option, *links = fields
        rows.append((name, path, src, option, links))
    return rows


# --- slots.conf ---------------------------------------------------------------------


def test_slots_conf_is_complete_and_consistent():
    conf = slots()
    for key in ("SLOTS", "ESP_PARTITION", "ESP_NAME", "GRUBENV", "VAR_BOOT_SLOT", "VAR_GOOD_SLOT",
                "VAR_BOOT_TRIES", "DEFAULT_ENV", "MAX_TRIES", "UPDATE_TRIES", "KERNEL_ARG"):
        assert key in conf, key
    slot_list = slot_names(conf)
    assert len(slot_list) == len(set(slot_list)) >= 2, slot_list
    numbers = [int(conf["ESP_PARTITION"])]
    for s in slot_list:
        numbers.append(int(conf[f"SLOT_{s.upper()}_PARTITION"]))
        assert conf[f"SLOT_{s.upper()}_NAME"], s
    assert len(set(numbers)) == len(numbers), f"two partitions share a number: {numbers}"
    env = default_env(conf)
    assert len(variables(conf)) == 3, "three distinct variable names"
    assert set(env) == variables(conf) and len(conf["DEFAULT_ENV"].split()) == 3, \
        f"DEFAULT_ENV sets each of the three variables once: {conf['DEFAULT_ENV']}"
    assert env[conf["VAR_BOOT_SLOT"]] in slot_list and env[conf["VAR_GOOD_SLOT"]] in slot_list, env
    assert env[conf["VAR_BOOT_TRIES"]] == "", "a new disk has no slot on trial"
    assert 1 <= int(conf["UPDATE_TRIES"]) <= int(conf["MAX_TRIES"]) <= 9, "tries are one digit"


def test_bash_reads_slots_conf_as_parsed_here():
    """image/build and post-image.sh `source` the file: bash must see the same values."""
    conf = slots()
    out = subprocess.run(
        ["bash", "-c", 'set -eu; . "$1"; shift; for k; do printf "%s=%s\\n" "$k" "${!k}"; done',
         "_", str(SLOTS_CONF), *conf],
        check=True, capture_output=True, text=True,
    ).stdout
    assert dict(line.split("=", 1) for line in out.splitlines()) == conf


# --- grub.cfg (GRUB script cannot read slots.conf) ----------------------------------


def grub():
    return read(GRUB_CFG)


def test_grub_loads_and_saves_exactly_the_variables():
    conf, cfg = slots(), grub()
    envfile = Path(conf["GRUBENV"])
    early = read(IMAGE / "grub" / "early.cfg")
    assert re.search(rf"^set prefix=\(\$root\){re.escape(str(envfile.parent))}$", early, re.M), \
        f"early.cfg's prefix is not the directory of GRUBENV {envfile}"
    for cmd in ("load_env", "save_env"):
        lines = re.findall(rf"^\s*{cmd} (.*)$", cfg, re.M)
        assert len(lines) == 1, f"one {cmd} in grub.cfg: {lines}"
        words = lines[0].split()
        assert words[:2] == ["--file", f"$prefix/{envfile.name}"], words
        assert set(words[2:]) == variables(conf) and len(words[2:]) == 3, f"{cmd}: {words[2:]}"
    # no other variable of the protocol's kind is used
    used = set(re.findall(r"\$\{?(\w+_(?:slot|tries))\b", cfg))
    assert used <= variables(conf), used - variables(conf)


def test_grub_defaults_are_the_default_environment():
    conf, cfg = slots(), grub()
    before_load = cfg.split("load_env", 1)[0]
    sets = dict(re.findall(r"^set (\w+)=(\S*)$", before_load, re.M))
    assert {k: v for k, v in sets.items() if k in variables(conf)} == default_env(conf)


def test_grub_accepts_only_the_slots():
    conf, cfg = slots(), grub()
    want = set(slot_names(conf))
    good = conf["VAR_GOOD_SLOT"]
    for var, then in ((conf["VAR_BOOT_SLOT"], f"${good}"), (good, default_env(conf)[good])):
        m = re.search(rf'^if \[ ((?:"\${var}" != \w+(?: -a )?)+) \]; then set {var}=(\S+); fi$', cfg, re.M)
        assert m, f"grub.cfg: the check that {var} is a slot"
        assert set(re.findall(r"!= (\w+)", m[1])) == want, m[0]
        assert m[2] == then, m[0]


def test_grub_counts_down_from_the_maximum_and_falls_back_to_good_slot():
    conf, cfg = slots(), grub()
    tries, boot, good = conf["VAR_BOOT_TRIES"], conf["VAR_BOOT_SLOT"], conf["VAR_GOOD_SLOT"]
    m = re.search(rf'^if \[ -n "\${tries}" \]; then\n(.*?)^\tsave_env ', cfg, re.M | re.S)
    assert m, "grub.cfg: the count-down of a non-empty boot_tries, then save_env"
    block = m[1]
    steps = re.findall(rf'if \[ "\${tries}" = (\d+) \]; then set {tries}=(\d+)$', block, re.M)
    maximum = int(conf["MAX_TRIES"])
    assert [(int(a), int(b)) for a, b in steps] == [(n, n - 1) for n in range(maximum, 0, -1)], steps
    fallback = block.rsplit("\telse\n", 1)
    assert len(fallback) == 2, "grub.cfg: an else branch once the tries are used up"
    assert re.search(rf"^\t\tset {boot}=\${good}$", fallback[1], re.M), fallback[1]
    assert re.search(rf"^\t\tset {tries}=$", fallback[1], re.M), fallback[1]
    # simulated: a slot put on trial with UPDATE_TRIES boots that many times, then the good one
    chain = {str(a): str(b) for a, b in steps}
    env = {boot: "b", good: "a", tries: conf["UPDATE_TRIES"]}
    booted = []
    for _ in range(maximum + 2):
        if env[tries]:
            if env[tries] in chain:
                env[tries] = chain[env[tries]]
            else:
                env[boot], env[tries] = env[good], ""
        booted.append(env[boot])
    assert booted == ["b"] * int(conf["UPDATE_TRIES"]) + ["a"] * (maximum + 2 - int(conf["UPDATE_TRIES"]))


def test_grub_boots_the_partitions_of_slots_conf_and_passes_the_slot():
    conf, cfg = slots(), grub()
    m = re.search(r"^function medlb_boot \{\n(.*?)^\}", cfg, re.M | re.S)
    assert m, "grub.cfg: function medlb_boot"
    body = m[1]
    pick = re.search(r'^\tif \[ "\$1" = (\w+) \]; then set part=(\d+); else set part=(\d+); fi$', body, re.M)
    assert pick, "medlb_boot picks the partition of slot $1"
    slot_list = slot_names(conf)
    assert len(slot_list) == 2, "grub.cfg's medlb_boot chooses between two slots"
    other = next(s for s in slot_list if s != pick[1])
    assert {pick[1]: int(pick[2]), other: int(pick[3])} == \
        {s: int(conf[f"SLOT_{s.upper()}_PARTITION"]) for s in slot_list}, pick[0]
    linux = re.findall(r"^\tlinux (.*)$", body, re.M)
    assert len(linux) == 1 and linux[0].startswith("($disk,gpt$part)/vmlinuz "), linux
    assert f"{conf['KERNEL_ARG']}=$1" in linux[0].split(), linux[0]
    assert re.search(r"^\tinitrd \(\$disk,gpt\$part\)/initrd\.img$", body, re.M)
    # the menu: the boot slot, the good slot, and each slot by itself
    entries = re.findall(r'^menuentry "[^"]*" --id=(\w+) \{\n\tmedlb_boot (\S+)\n\}', cfg, re.M)
    booted = [arg for _, arg in entries]
    assert booted[:2] == [f"${conf['VAR_BOOT_SLOT']}", f"${conf['VAR_GOOD_SLOT']}"], entries
    assert sorted(booted[2:]) == sorted(slot_list), entries


# --- genimage.cfg -------------------------------------------------------------------


def test_genimage_partitions_have_the_names_and_numbers_of_slots_conf():
    conf, cfg = slots(), read(GENIMAGE_CFG)
    disk = re.search(r"^image disk\.raw \{\n(.*?)^\}", cfg, re.M | re.S)
    assert disk, "genimage.cfg: image disk.raw"
    parts = re.findall(r"^\tpartition (\S+) \{\n(.*?)^\t\}", disk[1], re.M | re.S)
    # GPT numbers: the partitions in the table, in order (the MBR boot code is not one)
    table = [(name, body) for name, body in parts if not re.search(r"in-partition-table = false", body)]
    number = {name: i for i, (name, _) in enumerate(table, 1)}
    assert number.get(conf["ESP_NAME"]) == int(conf["ESP_PARTITION"]), number
    for s in slot_names(conf):
        name = conf[f"SLOT_{s.upper()}_NAME"]
        assert number.get(name) == int(conf[f"SLOT_{s.upper()}_PARTITION"]), (s, number)
        # the slot's file system carries the same name as its partition
        img = re.search(r'^\t\timage = "([^"]+)"$', dict(table)[name], re.M)[1]
        block = re.search(rf"^image {re.escape(img)} \{{\n(.*?)^\}}", cfg, re.M | re.S)
        assert block and f'label = "{name}"' in block[1], (name, img)
    # the ESP's files are the directory image/build and post-image.sh put GRUBENV under
    esp_img = re.search(r'^\t\timage = "([^"]+)"$', dict(table)[conf["ESP_NAME"]], re.M)[1]
    esp = re.search(rf"^image {re.escape(esp_img)} \{{\n(.*?)^\}}", cfg, re.M | re.S)[1]
    assert re.search(r'^\tsrcpath = "esp"$', esp, re.M), esp
    for script in (IMAGE_BUILD, POST_IMAGE):
        assert "esp$GRUBENV" in read(script), f"{script.name} writes the block at esp$GRUBENV"


# --- who reads slots.conf -----------------------------------------------------------


def test_image_build_and_post_image_take_the_environment_from_slots_conf():
    conf = slots()
    variable_names = variables(conf)
    for script, path in ((IMAGE_BUILD, '"$HERE/slots.conf"'), (POST_IMAGE, '"$IMAGE/slots.conf"')):
        text = read(script)
        assert re.search(rf"^\. {re.escape(path)}$", text, re.M), f"{script.name} sources slots.conf"
        assert "$DEFAULT_ENV" in text, script.name
        assert conf["GRUBENV"] not in code_of(text), f"{script.name} spells GRUBENV's path itself"
        for name in variable_names:
            assert f"{name}=" not in code_of(text), f"{script.name} writes {name} itself"


def test_bootenv_compiles_slots_conf_in():
    conf = slots()
    rs = read(BOOTENV_SRC / "slots.rs")
    assert 'include_str!("../../slots.conf")' in rs
    for key in ("VAR_BOOT_SLOT", "VAR_GOOD_SLOT", "VAR_BOOT_TRIES", "SLOTS", "ESP_NAME", "KERNEL_ARG",
                "DEFAULT_ENV", "MAX_TRIES", "UPDATE_TRIES"):
        assert f'conf("{key}")' in rs, key
    # outside its unit tests and comments, bootenv names none of the protocol's values
    main = read(BOOTENV_SRC / "main.rs").split("#[cfg(test)]", 1)[0]
    code = code_of(main, "//")
    for value in [*variables(conf), conf["KERNEL_ARG"], conf["ESP_NAME"], *slot_names(conf)]:
        assert not re.search(rf'"{re.escape(value)}[="]', code), f"bootenv's main.rs spells {value!r}"
    assert not re.search(r"\b\d+\s*\.\.=\s*\d+", code), "bootenv's main.rs spells a tries range"
    # Buildroot builds bootenv from image/, so that slots.conf is in its source tree
    mk = read(BOOTENV_MK)
    assert re.search(r"^MEDLB_BOOTENV_SITE = \$\(BR2_EXTERNAL_MEDLB_PATH\)/\.\./image$", mk, re.M), mk
    assert re.search(r"^MEDLB_BOOTENV_SUBDIR = bootenv$", mk, re.M), mk


# --- programs.txt -------------------------------------------------------------------


def test_programs_list_is_well_formed():
    rows = programs()
    names = [r[0] for r in rows]
    assert len(names) == len(set(names)), names
    paths = [r[1] for r in rows] + [link for r in rows for link in r[4]]
    assert len(paths) == len(set(paths)), paths
    for name, path, src, option, links in rows:
        assert path.startswith("/") and all(link.startswith("/") for link in links), name
        assert src in ("workspace", "image/bootenv") or src.startswith("/"), (name, src)
        assert re.fullmatch(r"BR2_PACKAGE_[A-Z0-9_]+", option), (name, option)
        # the Buildroot package that installs it is the one whose .mk reads its FROM
        if src == "workspace":
            assert option == "BR2_PACKAGE_MEDLB", name
        elif src == "image/bootenv":
            assert option == "BR2_PACKAGE_MEDLB_BOOTENV", name
        else:
            assert option not in ("BR2_PACKAGE_MEDLB", "BR2_PACKAGE_MEDLB_BOOTENV"), name


def test_programs_list_names_every_service_command():
    shipped = {r[1] for r in programs()} | {link for r in programs() for link in r[4]}
    services = read(IMAGE / "rootfs" / "etc" / "init" / "services.toml")
    commands = re.findall(r'^command\s*=\s*"([^"]+)"', services, re.M)
    assert commands, "services.toml starts no command?"
    for cmd in commands:
        assert cmd in shipped, f"services.toml starts {cmd}, which image/programs.txt does not ship"


def test_workspace_programs_are_binaries_of_the_workspace():
    """Buildroot builds them with cargo build --workspace --bins, image/build takes them
    from target/release: each must be a bin target of a workspace member."""
    meta = json.loads(subprocess.run(
        ["cargo", "metadata", "--no-deps", "--offline", "--format-version", "1",
         "--manifest-path", str(TOP / "Cargo.toml")],
        check=True, capture_output=True, text=True,
    ).stdout)
    bins = {t["name"] for p in meta["packages"] for t in p["targets"] if "bin" in t["kind"]}
    for name, _, src, _, _ in programs():
        if src == "workspace":
            assert name in bins, f"{name} is not a bin of the Cargo workspace ({sorted(bins)})"


def test_mark_good_link_is_the_hook_init_runs():
    bootenv = [r for r in programs() if r[2] == "image/bootenv"]
    assert len(bootenv) == 1, bootenv
    hooks = {p.relative_to(TOP) for p in (TOP / "init").rglob("*.rs")
             if '"usr/lib/init/mark-good"' in p.read_text()}
    assert hooks, "init no longer names usr/lib/init/mark-good: update image/programs.txt"
    assert "/usr/lib/init/mark-good" in bootenv[0][4]


def test_image_build_installs_from_the_programs_list():
    text = read(IMAGE_BUILD)
    assert '"$HERE/programs.txt"' in text
    assert re.search(r'^done < <\(sed -e \'s/#\.\*//\' "\$HERE/programs\.txt"\)$', text, re.M), \
        "image/build reads image/programs.txt"
    code = code_of(text).replace('$ROOTFS/', "/").replace('"$ROOTFS"/', "/")
    for name, path, src, _, links in programs():
        assert f"$BIN/{name}" not in code, f"image/build names {name} itself"
        if src.startswith("/"):
            assert not names(code, src), f"image/build names {src} itself"
        for p in [path, *links]:
            assert not names(code, p), f"image/build names {p} itself"
            if "/" in p.lstrip("/"):
                assert not names(code, p.lstrip("/")), f"image/build names {p} itself"


def test_buildroot_packages_install_from_the_programs_list():
    medlb, bootenv = read(MEDLB_MK), read(BOOTENV_MK)
    assert re.search(r"^MEDLB_PROGRAMS = sed -e 's/\\#\.\*//' \$\(MEDLB_IMAGE\)/programs\.txt$", medlb, re.M)
    assert "$(call MEDLB_INSTALL_PROGRAMS,workspace," in medlb
    assert "$(call MEDLB_INSTALL_PROGRAMS,image/bootenv," in bootenv
    assert "MEDLB_TARGET_FINALIZE_HOOKS += MEDLB_CHECK_PROGRAMS" in medlb
    for name, path, _, _, links in programs():
        for mk in (medlb, bootenv):
            code = code_of(mk).replace("$(TARGET_DIR)/", "/")
            assert f"release/{name}" not in code, f"a Buildroot .mk names {name} itself"
            for p in [path, *links]:
                assert not names(code, p), f"a Buildroot .mk names {p} itself"
                if p in links:
                    assert not names(code, Path(p).name), f"a Buildroot .mk names {Path(p).name} itself"


def test_buildroot_selects_the_packages_of_the_programs_list():
    config = read(MEDLB_CONFIG_IN)
    selects = set(re.findall(r"^\tselect (BR2_\w+)", config, re.M))
    for name, _, _, option, _ in programs():
        if option != "BR2_PACKAGE_MEDLB":
            assert option in selects, f"buildroot/package/medlb/Config.in does not select {option} ({name})"
    defconfig = read(BUILDROOT / "configs" / "medlb_defconfig")
    for name, _, _, option, _ in programs():
        assert f"{option}=y" in defconfig.splitlines(), f"medlb_defconfig lacks {option}=y ({name})"


def test_image_build_hashes_the_descriptions():
    """image/build is make-like: the steps that use a description must hash it."""
    text = read(IMAGE_BUILD).replace("\\\n", " ")
    hashes = {}
    for line in text.splitlines():
        m = re.match(r"^h=\$\(hash_inputs (.*) (\w+)-v\d+\)$", line.strip())
        if m:
            hashes[m[2]] = m[1]
    for step, inputs in (("bootenv", ['"$HERE/slots.conf"']),
                         ("grub", ['"$HERE/slots.conf"']),
                         ("rootfs", ['"$HERE/programs.txt"', '"${prog_src[@]}"'])):
        assert step in hashes, f"no hash for step {step}: {sorted(hashes)}"
        for i in inputs:
            assert i in hashes[step].split(), f"step {step} does not hash {i}"
