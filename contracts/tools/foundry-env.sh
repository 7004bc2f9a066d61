# Source from the project root:   . tools/foundry-env.sh
# 1) Put the *native* forge/anvil/cast from the npm platform packages first on PATH. The npm
#    launchers in node_modules/.bin (bin.mjs) exit 0 even when forge fails (@foundry-rs/* 1.7.1).
# 2) Give forge an absolute path to the solc shim, so forge also works from subdirectories
#    (a relative `solc = "tools/solc"` in foundry.toml is resolved against the current directory).
for _d in "$PWD"/node_modules/@foundry-rs/*-*-*/bin; do
  [ -d "$_d" ] && PATH="$_d:$PATH"
done
unset _d
export PATH
export FOUNDRY_SOLC="$PWD/tools/solc"
