"""Write the TensorFlow checkpoint fixtures in tests/fixtures/tf/ with real TensorFlow.

Run once, by a developer, in a throwaway virtualenv (TensorFlow is never a dependency of gpt2scratch):

    python3 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu numpy
    /tmp/tfvenv/bin/python scripts/make_tf_fixtures.py [OUT_DIR]

It writes:
- ``gpt2_a/`` and ``gpt2_b/``: GPT-2 checkpoints in OpenAI's variable layout (``model/wte``,
  ``model/h0/attn/c_attn/w`` [1, E, 3E], …) saved by ``tf.compat.v1.train.Saver`` like OpenAI's, with
  random values in every tensor (biases and layer-norm gains too), their ``hparams.json``, and the
  logits TensorFlow itself computes for ``input_ids.npy`` with GPT-2's forward pass (``logits.npy``).
- ``gpt2_sharded/``: the same kind of checkpoint with its variables on three devices, saved with
  ``sharded=True``: three ``.data-0000N-of-00003`` shards merged under one index.
- ``dtypes/``: one tensor of each dtype such files hold (written by TF's ``SaveV2`` op) and
  ``expected.npz`` with their values (bfloat16 as uint16 bits, strings as bytes).
- ``big/`` (only with ``--big DIR``): a 124M-shaped checkpoint for the benchmark, written to DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 3
)

SHAPES = {
    "gpt2_a": dict(n_vocab=500, n_ctx=64, n_embd=32, n_head=4, n_layer=2, seed=1),
    "gpt2_b": dict(n_vocab=300, n_ctx=32, n_embd=48, n_head=4, n_layer=3, seed=2),
    "gpt2_sharded": dict(n_vocab=200, n_ctx=16, n_embd=32, n_head=2, n_layer=2, seed=3),
}
BIG = dict(n_vocab=50257, n_ctx=1024, n_embd=768, n_head=12, n_layer=12, seed=4)


def gpt2_arrays(h: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random float32 values, in OpenAI's names and shapes, for every GPT-2 variable."""
    E, V, P = h["n_embd"], h["n_vocab"], h["n_ctx"]

    def rand(*shape, scale=0.1, loc=0.0):
        return (loc + scale * rng.standard_normal(shape)).astype(np.float32)

    arrays = {"model/wte": rand(V, E, scale=0.2), "model/wpe": rand(P, E, scale=0.05)}
    for i in range(h["n_layer"]):
        p = f"model/h{i}"
        for ln in ("ln_1", "ln_2"):
            arrays[f"{p}/{ln}/g"], arrays[f"{p}/{ln}/b"] = rand(E, loc=1.0), rand(E)
        for name, (nx, nf) in {
            "attn/c_attn": (E, 3 * E), "attn/c_proj": (E, E), "mlp/c_fc": (E, 4 * E), "mlp/c_proj": (4 * E, E),
        }.items():  # fmt: skip
            arrays[f"{p}/{name}/w"], arrays[f"{p}/{name}/b"] = rand(1, nx, nf, scale=nx**-0.5), rand(nf)
    arrays["model/ln_f/g"], arrays["model/ln_f/b"] = rand(E, loc=1.0), rand(E)
    return arrays


def save_v1(arrays: dict[str, np.ndarray], folder: Path, sharded: bool = False) -> None:
    """Save as OpenAI did: graph-mode variables, ``tf.compat.v1.train.Saver`` → ``model.ckpt``.

    Saved in a temporary folder first and moved, so the ``checkpoint`` file names an absolute path that
    no longer exists, as in OpenAI's release (readers must take only its file name)."""
    with tempfile.TemporaryDirectory() as tmp:
        _save_v1(arrays, Path(tmp), sharded)
        for f in Path(tmp).iterdir():
            shutil.move(f, folder / f.name)


def _save_v1(arrays: dict[str, np.ndarray], folder: Path, sharded: bool) -> None:
    graph = tf.Graph()
    with graph.as_default():
        variables = []
        for k, (name, value) in enumerate(arrays.items()):
            device = f"/device:CPU:{k % 3}" if sharded else "/device:CPU:0"
            with tf.device(device):
                variables.append(tf.compat.v1.get_variable(name, initializer=value))
        saver = tf.compat.v1.train.Saver(var_list=variables, sharded=sharded)
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, str(folder.resolve() / "model.ckpt"), write_meta_graph=False)


# --- GPT-2's forward pass in TensorFlow (OpenAI's model.py, re-expressed) ----------------------------


def layer_norm(x, g, b, eps=1e-5):
    u = tf.reduce_mean(x, axis=-1, keepdims=True)
    s = tf.reduce_mean(tf.square(x - u), axis=-1, keepdims=True)
    return (x - u) * tf.math.rsqrt(s + eps) * g + b


def conv1d(x, w, b):
    return tf.einsum("bti,io->bto", x, w[0]) + b


def gelu(x):
    return 0.5 * x * (1 + tf.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * tf.pow(x, 3))))


def attention(x, a: dict, p: str, n_head: int):
    B, T, E = x.shape
    q, k, v = tf.split(conv1d(x, a[f"{p}/attn/c_attn/w"], a[f"{p}/attn/c_attn/b"]), 3, axis=2)
    heads = [tf.transpose(tf.reshape(t, [B, T, n_head, E // n_head]), [0, 2, 1, 3]) for t in (q, k, v)]
    w = tf.matmul(heads[0], heads[1], transpose_b=True) * tf.math.rsqrt(float(E // n_head))
    mask = tf.linalg.band_part(tf.ones([T, T]), -1, 0)
    w = tf.nn.softmax(w * mask - 1e10 * (1 - mask), axis=-1)
    out = tf.reshape(tf.transpose(tf.matmul(w, heads[2]), [0, 2, 1, 3]), [B, T, E])
    return conv1d(out, a[f"{p}/attn/c_proj/w"], a[f"{p}/attn/c_proj/b"])


def gpt2_logits(a: dict, h: dict, ids: np.ndarray) -> np.ndarray:
    a = {k: tf.constant(v) for k, v in a.items()}
    x = tf.gather(a["model/wte"], ids) + a["model/wpe"][: ids.shape[1]]
    for i in range(h["n_layer"]):
        p = f"model/h{i}"
        x = x + attention(layer_norm(x, a[f"{p}/ln_1/g"], a[f"{p}/ln_1/b"]), a, p, h["n_head"])
        m = gelu(
            conv1d(
                layer_norm(x, a[f"{p}/ln_2/g"], a[f"{p}/ln_2/b"]), a[f"{p}/mlp/c_fc/w"], a[f"{p}/mlp/c_fc/b"]
            )
        )
        x = x + conv1d(m, a[f"{p}/mlp/c_proj/w"], a[f"{p}/mlp/c_proj/b"])
    x = layer_norm(x, a["model/ln_f/g"], a["model/ln_f/b"])
    return tf.einsum("bte,ve->btv", x, a["model/wte"]).numpy()


def write_gpt2(folder: Path, shape: dict, sharded: bool = False, logits: bool = True) -> None:
    h = {k: v for k, v in shape.items() if k != "seed"}
    rng = np.random.default_rng(shape["seed"])
    arrays = gpt2_arrays(h, rng)
    folder.mkdir(parents=True, exist_ok=True)
    save_v1(arrays, folder, sharded)
    (folder / "hparams.json").write_text(json.dumps(h, indent=2) + "\n")
    if logits:
        ids = rng.integers(0, h["n_vocab"], size=(2, min(h["n_ctx"], 12)), dtype=np.int64)
        np.save(folder / "input_ids.npy", ids)
        np.save(folder / "logits.npy", gpt2_logits(arrays, h, ids))


# --- the dtype fixture -------------------------------------------------------------------------------


def dtype_tensors() -> dict[str, tf.Tensor]:
    rng = np.random.default_rng(5)
    f = rng.standard_normal(12).astype(np.float32)
    return {
        "float32": tf.constant(f.reshape(3, 4)),
        "float64": tf.constant(rng.standard_normal((2, 3))),
        "float16": tf.constant(np.array([0.5, -1.25, 65504.0, 6e-8, -0.0], np.float16)),
        "bfloat16": tf.cast(tf.constant(f[:6].reshape(2, 3) * 100), tf.bfloat16),
        "int8": tf.constant(np.array([-128, -1, 0, 127], np.int8)),
        "uint8": tf.constant(np.array([0, 1, 200, 255], np.uint8)),
        "int16": tf.constant(np.array([-32768, 12345, 32767], np.int16)),
        "uint16": tf.constant(np.array([0, 40000, 65535], np.uint16)),
        "int32": tf.constant(np.array([[-(2**31), 7], [0, 2**31 - 1]], np.int32)),
        "int64": tf.constant(np.array([-(2**63), 2**53 + 1, 2**63 - 1], np.int64)),
        "uint32": tf.constant(np.array([0, 2**32 - 1], np.uint32)),
        "uint64": tf.constant(np.array([0, 2**64 - 1], np.uint64)),
        "bool": tf.constant(np.array([[True, False, True], [False, False, True]])),
        "complex64": tf.constant(np.array([1 + 2j, -3.5j], np.complex64)),
        "string": tf.constant([b"hello", b"", "caf\u00e9".encode()]),
        "scalar": tf.constant(np.float32(3.25)),
        "empty": tf.zeros([0, 3], tf.float32),
        "nested/name/with/slashes": tf.constant(np.arange(6, dtype=np.int32).reshape(1, 2, 3)),
    }


def expected_value(t: tf.Tensor) -> np.ndarray:
    value = t.numpy()
    if t.dtype == tf.bfloat16:
        return np.asarray(value).view(np.uint16)
    if t.dtype == tf.string:
        return np.asarray(value, dtype=np.bytes_)
    return np.asarray(value)


def write_dtypes(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tensors = dtype_tensors()
    names = list(tensors)
    tf.raw_ops.SaveV2(
        prefix=str(folder / "dtypes.ckpt"), tensor_names=names, shape_and_slices=[""] * len(names),
        tensors=[tensors[n] for n in names],
    )  # fmt: skip
    np.savez(folder / "expected.npz", **{n.replace("/", "__"): expected_value(t) for n, t in tensors.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "out", nargs="?", default=Path(__file__).resolve().parents[1] / "tests/fixtures/tf", type=Path
    )
    parser.add_argument("--big", type=Path, help="also write a 124M-shaped checkpoint (≈500 MB) here")
    args = parser.parse_args()
    if args.big:
        write_gpt2(args.big, BIG, logits=False)
        return
    for name, shape in SHAPES.items():
        write_gpt2(args.out / name, shape, sharded=name.endswith("sharded"))
    write_dtypes(args.out / "dtypes")
    print(f"wrote fixtures under {args.out}")


if __name__ == "__main__":
    main()
