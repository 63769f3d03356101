"""Property tests (hypothesis) of the parsers users feed files and text to: the tokenizer round trip, config
loading, the checkpoint reader, and the dataset loaders (training and ``classify``) on junk rows.

The contract for bad input everywhere: a result, or an error a user can act on (``cli.USER_ERRORS``,
exit 2) — never another exception, never a silently wrong result.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gpt2scratch.cli import USER_ERRORS
from gpt2scratch.configuration_gpt2scratch import GPT2ScratchConfig
from gpt2scratch.tokenizer import ENDOFTEXT, encode, load_encoding
from gpt2scratch.training.checkpoints import (
    MARKER,
    checkpoint_problem,
    finish_checkpoint,
    latest_checkpoint,
    temp_checkpoint_dir,
)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# ----------------------------------------------------------------------------------------- tokenizer


@FAST
@given(text=st.text(max_size=200) | st.lists(st.text(max_size=20)).map(ENDOFTEXT.join))
def test_tokenizer_round_trips_any_unicode(vocab_dir, text):
    encoding = load_encoding(vocab_dir)
    ids = encode(encoding, text)
    assert all(0 <= i <= 50256 for i in ids)
    assert encoding.decode(ids) == text


# ----------------------------------------------------------------------------------------- config

SIZES = ("n_embd", "n_head", "n_layer", "n_positions", "vocab_size")
JUNK = st.one_of(
    st.none(),
    st.text(max_size=5),
    st.integers(max_value=0),
    st.floats().filter(lambda x: not x.is_integer()),
    st.lists(st.integers(), max_size=2),
)


def _load_config(values: dict):
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "config.json").write_text(json.dumps(values), encoding="utf-8")
        return GPT2ScratchConfig.from_pretrained(folder)


@FAST
@given(
    n_head=st.integers(1, 8),
    head_dim=st.integers(1, 16),
    n_layer=st.integers(1, 4),
    n_positions=st.integers(1, 4096),
    dropout=st.floats(0, 0.99),
)
def test_valid_config_round_trips_through_config_json(n_head, head_dim, n_layer, n_positions, dropout):
    config = GPT2ScratchConfig(
        n_embd=n_head * head_dim, n_head=n_head, n_layer=n_layer, n_positions=n_positions, resid_pdrop=dropout
    )
    loaded = _load_config(config.to_dict())
    assert loaded.to_dict() == config.to_dict()


@settings(max_examples=60, deadline=None)
@given(field=st.sampled_from(SIZES), value=JUNK)
def test_config_with_a_wrong_size_is_refused_with_a_value_error_naming_it(field, value):
    values = GPT2ScratchConfig.from_preset("tiny").to_dict()
    values[field] = value
    with pytest.raises(ValueError, match=field):
        _load_config(values)


# ----------------------------------------------------------------------------------------- checkpoint reader


def _write_checkpoint(out: Path, step: int, payload: bytes) -> Path:
    tmp = temp_checkpoint_dir(out, step)
    (tmp / "state").mkdir(parents=True)
    (tmp / "state" / "model.safetensors").write_bytes(payload)
    (tmp / "state" / "optimizer.bin").write_bytes(payload[::-1] + b"opt")
    return finish_checkpoint(out, step, {"step": step, "history": {}})


DAMAGE = st.sampled_from(["truncate", "flip", "append", "delete", "marker-junk", "marker-field"])


@FAST
@given(
    payload=st.binary(min_size=1, max_size=300),
    damage=DAMAGE,
    target=st.sampled_from(["state/model.safetensors", "state/optimizer.bin", "trainer_state.json"]),
    where=st.floats(0, 1, exclude_max=True),
    junk=st.binary(max_size=50),
)
def test_checkpoint_reader_detects_any_damage_and_falls_back(payload, damage, target, where, junk):
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        older, newest = _write_checkpoint(out, 2, payload), _write_checkpoint(out, 4, payload)
        assert checkpoint_problem(newest) is None and latest_checkpoint(out) == newest
        path = newest / target
        data = path.read_bytes()
        if damage == "truncate":
            path.write_bytes(data[: int(where * len(data))])
        elif damage == "flip":
            i = int(where * len(data))
            path.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :])
        elif damage == "append":
            path.write_bytes(data + (junk or b"\0"))
        elif damage == "delete":
            path.unlink()
        elif damage == "marker-junk":
            assume(junk != (newest / MARKER).read_bytes())
            (newest / MARKER).write_bytes(junk)
        else:
            marker = json.loads((newest / MARKER).read_text())
            marker["files"][target] = junk.decode("latin-1")
            (newest / MARKER).write_text(json.dumps(marker))
        problem = checkpoint_problem(newest)
        assert isinstance(problem, str) and problem
        assert latest_checkpoint(out) == older


# ----------------------------------------------------------------------------------------- dataset loaders

JUNK_LINE = st.one_of(
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r"), max_size=40),
    st.dictionaries(  # records with missing, extra, empty or mistyped fields (what a JSONL file may hold)
        st.sampled_from(["text", "label", "other"]), st.one_of(st.text(max_size=10), st.integers(), st.none())
    ).map(json.dumps),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lines=st.lists(JUNK_LINE, min_size=0, max_size=8),
    # .jsonl: every line is parsed by Python's json first (one junk JSONL file once made pyarrow's reader segfault)
    suffix=st.sampled_from([".csv", ".tsv", ".jsonl", ""]),
    header=st.booleans(),
)
def test_training_loader_on_junk_rows_gives_rows_or_a_user_error(tmp_path_factory, lines, suffix, header):
    from gpt2scratch.training.data import read_table, standardise

    path = tmp_path_factory.mktemp("junk") / f"train{suffix}"
    first = {".csv": "text,label", ".tsv": "text\tlabel"}.get(suffix) if header else None
    path.write_text("\n".join([first, *lines] if first else lines), encoding="utf-8")
    args = SimpleNamespace(task="classification", text_column=None, label_column="label")
    try:
        ds = standardise(read_table(path), args, str(path))
    except USER_ERRORS:
        return
    assert len(ds) >= 1 and set(ds.column_names) == {"text", "label", "_row"}
    assert all(isinstance(t, str) and t.strip() for t in ds["text"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=200), header=st.sampled_from([b"", b"text\n", b"id,text\n"]))
def test_classify_reader_on_junk_bytes_gives_rows_or_a_user_error(tmp_path_factory, body, header):
    from gpt2scratch.training.data import open_table

    path = tmp_path_factory.mktemp("junk") / "input.csv"
    path.write_bytes(header + body)
    try:
        with open_table(path) as table:
            index = table.column("text", "--text-column")
            texts = [table.full_row(line, row)[index] for line, row in table.rows]
    except USER_ERRORS:
        return
    assert all(isinstance(t, str) for t in texts)


def test_malformed_jsonl_line_is_named(tmp_path):
    from gpt2scratch.training.data import read_table

    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "hi", "label": "ham"}\n{"text": "oops", \n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"train.jsonl, line 2: not valid JSON"):
        read_table(path)
    path.write_text('{"text": "hi", "label": "ham"}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"line 2: expected a JSON object"):
        read_table(path)


def test_malformed_json_document_names_its_line_and_a_bom_is_read(tmp_path):
    from gpt2scratch.training.data import read_table

    path = tmp_path / "train.json"
    records = ['  {"instruction": "a", "output": "b"},', '  {"instruction": "c" "output": "d"}']
    path.write_text("[\n" + "\n".join(records) + "\n]\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"train.json, line 3, column 23: not valid JSON \(Expecting ','"):
        read_table(path)
    path.write_text('{\n  "text": ["hi"],\n  "label" ["ham"]\n}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"train.json, line 3, column"):
        read_table(path)
    path.write_text('\ufeff[{"text": "hi", "label": "ham"}]\n', encoding="utf-8")
    assert read_table(path)["text"] == ["hi"]
