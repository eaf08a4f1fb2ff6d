# One stage's program: the protocol wrapper around the stage's code, as an
# executable whose first line execs the runtime's interpreter. Its inputs
# are exactly the code, the wrapper (and its version) and the runtime.
{ name, runtime, builderRuntime, interpreter, code, wrapper, wrapperVersion
, system ? builtins.currentSystem }:
derivation {
  inherit name system interpreter code wrapper wrapperVersion;
  runtime = builtins.storePath runtime;
  builder = "${builtins.storePath builderRuntime}/bin/python3";
  # Nix starts the builder with a bare argv[0]; tell Python where it lives.
  PYTHONHOME = builtins.storePath builderRuntime;
  args = [ "-S" "-c" ''
import os
out = os.environ["out"]
os.makedirs(out + "/bin")
with open(os.environ["wrapperPath"]) as w, open(os.environ["codePath"]) as c:
    program = w.read().replace("@RUNTIME_BIN@", os.environ["runtime"] + "/bin").replace("@STAGE_CODE@", c.read())
launcher = out + "/bin/stage"
with open(launcher, "w") as f:
    f.write("#!" + os.environ["interpreter"] + "\n" + program)
os.chmod(launcher, 0o555)
'' ];
  passAsFile = [ "code" "wrapper" ];
}
