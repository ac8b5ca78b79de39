#!/usr/bin/env bash
# Fill .whl/ (ignored by git) with what bench/gpu_check.sh needs on the lent GPU machine, which has no network and
# comes with torch 2.11+cu130, transformers 5.17, peft and accelerate 1.15 but not these:
#   deepspeed 0.19.8 (a wheel built here from its sdist: pure Python, its ops compile there if ever used) and the
#   packages it needs that the machine lacks (hjson, pydantic + pydantic-core + annotated-types + typing-inspection,
#   typing-extensions for pydantic); bitsandbytes 0.50.2 for QLoRA, repacked with only its CUDA 13.0 and CPU
#   libraries (the PyPI wheel carries one per CUDA and ROCm version: 43 MB, most of the 64 MiB a call may carry);
#   .whl/smollm2/: SmolLM2-135M-Instruct's config, generation config and tokenizer, from the directory Ember converts
#   the embedded GGUF into ($EMBER_CACHE/gguf/<hash>). Its weights do not travel: 538 MB as fp32 safetensors (98 MB
#   as the Q4_1 GGUF) against 64 MiB for everything a call carries, so gpu_check.sh trains a randomly initialised
#   model of exactly SmolLM2's architecture unless .whl/smollm2/model.safetensors exists.
# Usage (repo root, with the project venv set up):  bash bench/gpu_wheels.sh
# Then, through the device tool:  run(command="bash bench/gpu_check.sh /tmp/gpu_check $OUT", carry=[".whl"])
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DEST=.whl
LIMIT=$((60 * 1024 * 1024))   # leave room under the 64 MiB limit for the repository itself
mkdir -p "$DEST"
rm -f "$DEST"/*.whl

download() {  # NAME==VERSION: a CPython 3.12 manylinux wheel for the GPU machine, without its dependencies
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "$1"
}

# deepspeed ships only an sdist; the wheel built from it is py3-none-any (no ops are prebuilt into it).
"$PY" -m pip wheel -q --no-deps -w "$DEST" deepspeed==0.19.8
for pkg in hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
           typing-extensions==4.16.0; do
  download "$pkg"
done

# bitsandbytes: keep the Python code and the CUDA 13.0 + CPU libraries, drop the other CUDA/ROCm/XPU builds.
tmp=$(mktemp -d)
download bitsandbytes==0.50.2
mv "$DEST"/bitsandbytes-*.whl "$tmp"/
"$PY" - "$tmp" "$DEST" <<'PYTHON'
import base64, hashlib, re, sys, zipfile
from pathlib import Path

src = next(Path(sys.argv[1]).glob("bitsandbytes-*.whl"))
dst = Path(sys.argv[2]) / src.name
keep = re.compile(r"libbitsandbytes_(cpu|cuda130)\.so$")
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
    names = [n for n in zin.namelist() if not (n.endswith(".so") and not keep.search(n))]
    record_name = next(n for n in names if n.endswith(".dist-info/RECORD"))
    rows = []
    for name in names:
        if name == record_name:
            continue
        data = zin.read(name)
        zout.writestr(zin.getinfo(name), data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        rows.append(f"{name},sha256={digest},{len(data)}")
    rows.append(f"{record_name},,")
    zout.writestr(record_name, "\n".join(rows) + "\n")
print(f"bitsandbytes: {src.stat().st_size / 2**20:.1f} MB wheel repacked as {dst.stat().st_size / 2**20:.1f} MB")
PYTHON
rm -rf "$tmp"

# SmolLM2's config and tokenizer, from Ember's converted copy of the embedded GGUF (converted here if needed).
smol=$("$PY" -c "from ember.models.loading import resolve_source; print(resolve_source('smollm2-135m-instruct'))")
mkdir -p "$DEST/smollm2"
for f in config.json generation_config.json tokenizer.json tokenizer_config.json chat_template.jinja special_tokens_map.json; do
  [ -f "$smol/$f" ] && cp "$smol/$f" "$DEST/smollm2/"
done
rm -f "$DEST/smollm2/model.safetensors"

ls -la "$DEST" "$DEST/smollm2"
size=$(du -sb "$DEST" | cut -f1)
tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
echo "$DEST: $((size / 1024)) KiB; tracked files: $((tree / 1024)) KiB; device-call limit: 65536 KiB"
if [ "$size" -gt "$LIMIT" ]; then
  echo "error: $DEST is over $((LIMIT / 1024 / 1024)) MiB" >&2
  exit 1
fi
