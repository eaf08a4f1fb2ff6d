# One stage's program: the protocol wrapper around the stage's code, as an
# executable whose first line execs the runtime's interpreter. Its inputs
# are exactly the code, the wrapper (and its version) and the runtime.
#
# The builder also checks that the code compiles (python: compile(); bash:
# bash -n; javascript: node --check), so a syntax error is a build failure
# with the interpreter's message, reported at `stage add`, not a mystery at
# run time.
#
# `wheels` (space-separated store paths, fixed-output wheels fetched on the
# host) are unpacked into $out/site, which the program puts first on sys.path.
{ name, runtime, builderRuntime, interpreter, language, code, wrapper, wrapperVersion
, wheels ? "", system ? builtins.currentSystem }:
derivation {
  wheels = map builtins.storePath (builtins.filter (w: builtins.isString w && w != "") (builtins.split " " wheels));
  inherit name system interpreter language code wrapper wrapperVersion;
  runtime = builtins.storePath runtime;
  builder = "${builtins.storePath builderRuntime}/bin/python3";
  # Nix starts the builder with a bare argv[0]; tell Python where it lives.
  PYTHONHOME = builtins.storePath builderRuntime;
  PYTHONDONTWRITEBYTECODE = "1";
  args = [ "-S" "-c" ''
import os, subprocess, sys
env = os.environ
out, lang = env["out"], env["language"]
with open(env["wrapperPath"]) as w, open(env["codePath"]) as c:
    wrapper, code = w.read(), c.read()
original = code
future = ""
if lang == "python":
    # `from __future__` must come first in a module: hoist it above the wrapper.
    lines = code.splitlines(keepends=True)
    future = "".join(ln for ln in lines if ln.startswith("from __future__ import"))
    code = "".join(ln for ln in lines if not ln.startswith("from __future__ import"))
# One pass, so nothing substituted is substituted again. @STAGE_CODE_LITERAL@
# is the code as a Python string literal (the python wrapper compiles it as a
# file of its own, so tracebacks carry the stage's own line numbers).
# @STAGE_CODE_JSON@ is the same as a JSON (and so JavaScript) string literal.
import json, re
parts = {"RUNTIME_BIN": env["runtime"] + "/bin", "STAGE_CODE": code, "STAGE_CODE_LITERAL": repr(original),
         "STAGE_CODE_JSON": json.dumps(original)}
program = re.sub(r"@(RUNTIME_BIN|STAGE_CODE_LITERAL|STAGE_CODE_JSON|STAGE_CODE)@", lambda m: parts[m.group(1)],
                 wrapper)
os.makedirs(out + "/bin")
launcher = out + "/bin/stage"
site = ""
if env.get("wheels"):
    import zipfile
    for wheel in env["wheels"].split():
        zipfile.ZipFile(wheel).extractall(out + "/site")
    site = "import sys as _noether_site\n_noether_site.path.insert(0, %r)\n" % (out + "/site")
    # Wheels' extension modules look up system libraries (libstdc++, libdl…)
    # by soname; the sandbox has no /lib. Loading the runtime's copies first,
    # globally, makes those lookups find them.
    site += ("import ctypes as _noether_ct, os as _noether_os\n"
             "for _n in ('libgcc_s.so.1', 'libstdc++.so.6', 'libm.so.6', 'libdl.so.2', 'librt.so.1', "
             "'libpthread.so.0', 'libutil.so.1', 'libresolv.so.2', 'libz.so.1'):\n"
             "    _p = _noether_os.path.join(%r, _n)\n"
             "    if _noether_os.path.exists(_p):\n"
             "        _noether_ct.CDLL(_p, mode=_noether_ct.RTLD_GLOBAL)\n") % (env["runtime"] + "/lib")
with open(launcher, "w") as f:
    f.write("#!" + env["interpreter"] + "\n" + future + site + program)
os.chmod(launcher, 0o555)
marker = "noether: stage code does not compile"
# Check the code on its own first, so line numbers are the author's, then the
# whole program (the wrapper must not be what breaks).
with open("code", "w") as f:
    f.write(original)
for path in ("code", launcher):
    if lang == "python":
        try:
            with open(path) as f:
                compile(f.read(), "stage" if path == launcher else "code", "exec")
            continue
        except SyntaxError as e:
            message = "%s: %s (line %s)" % (type(e).__name__, e.msg, e.lineno)
    else:
        check = {"bash": ["-n"], "javascript": ["--check"]}[lang]
        r = subprocess.run([env["interpreter"], *check, path], capture_output=True, text=True)
        if r.returncode == 0:
            continue
        message = r.stderr.replace(launcher, "stage").replace(os.path.abspath("code"), "code").strip()
    print(marker, file=sys.stderr)
    print(message, file=sys.stderr)
    sys.exit(1)
'' ];
  passAsFile = [ "code" "wrapper" ];
}
