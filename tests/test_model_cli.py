"""Weight exchange with transformers' GPT-2 and the model commands (init, generate, info)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from gpt2scratch.cli import main
from gpt2scratch.conversion.hf_gpt2 import to_hf_model
from gpt2scratch.tokenizer import hf_tokenizer


@pytest.fixture
def cli(capsys):
    """Run ``gpt2scratch ARGS`` in this process (a subprocess costs a full torch + transformers import);
    returns (exit code, stdout, stderr). One test below runs the real console command."""

    def run(*args: str):
        capsys.readouterr()
        code = main(list(args))
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory, vocab_dir):
    """A transformers GPT-2 folder (like a local copy of openai-community/gpt2), random weights."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=48, n_head=3, n_layer=2, n_positions=64)).eval()
    out = tmp_path_factory.mktemp("hf") / "gpt2"
    model.save_pretrained(out)
    hf_tokenizer(vocab_dir).save_pretrained(out)  # tokenizer.json only, as the Hub's GPT-2 ships it
    return out


def test_round_trip_hf_to_ours_to_hf_identical_tensors(hf_folder, tmp_path, cli):
    ours, back = tmp_path / "ours", tmp_path / "back"
    assert cli("convert-hf", str(hf_folder), str(ours))[0] == 0
    assert cli("export-hf", str(ours), str(back))[0] == 0
    original, returned = load_file(hf_folder / "model.safetensors"), load_file(back / "model.safetensors")
    assert set(original) == set(returned)
    for key, value in original.items():
        assert torch.equal(value, returned[key]), key
    # the exported folder loads with plain transformers (no remote code) and the tokenizer comes along
    plain = GPT2LMHeadModel.from_pretrained(back).eval()
    remote = AutoModelForCausalLM.from_pretrained(ours, trust_remote_code=True).eval()
    x = torch.randint(0, 50257, (2, 13))
    with torch.no_grad():
        assert torch.allclose(plain(x).logits, remote(x).logits, atol=1e-5)
    assert (ours / "vocab.json").exists() and (back / "tokenizer.json").exists()


def test_convert_hf_without_tokenizer_needs_tokenizer_dir(hf_folder, tmp_path, vocab_dir, cli):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((hf_folder / name).read_bytes())
    code, _, err = cli("convert-hf", str(bare), str(tmp_path / "out"))
    assert code == 2 and "--tokenizer-dir" in err
    assert not (tmp_path / "out").exists()
    assert cli("convert-hf", str(bare), str(tmp_path / "out"), "--tokenizer-dir", str(vocab_dir))[0] == 0


def test_export_refuses_models_transformers_cannot_hold():
    from gpt2scratch import GPT2ScratchConfig, GPT2ScratchForCausalLM

    model = GPT2ScratchForCausalLM(GPT2ScratchConfig.from_preset("tiny", vocab_size=100, qkv_bias=False))
    with pytest.raises(ValueError, match="qkv_bias=False"):
        to_hf_model(model)


def test_init_with_overrides_then_info_and_generate(tmp_path, vocab_dir):
    out = tmp_path / "m"
    args = [
        "init",
        "tiny",
        str(out),
        "--tokenizer-dir",
        str(vocab_dir),
        "--set",
        "n_layer=3",
        "attn_pdrop=0.0",
    ]
    result = run_cli(*args, "--set", "n_embd=48", "n_head=3")
    assert result.returncode == 0, result.stderr
    config = json.loads((out / "config.json").read_text())
    assert (config["n_layer"], config["n_embd"], config["n_head"], config["attn_pdrop"]) == (3, 48, 3, 0.0)
    info = run_cli("info", str(out))
    assert info.returncode == 0 and json.loads(info.stdout)["config"]["n_layer"] == 3
    gen = run_cli("generate", str(out), "--prompt", "Hello world", "--max-new-tokens", "6")
    assert gen.returncode == 0, gen.stderr
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    tok = hf_tokenizer(vocab_dir)
    ids = tok("Hello world", return_tensors="pt")["input_ids"]
    expected = tok.decode(model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=50256)[0])
    assert gen.stdout.strip() == expected.strip()


def test_init_errors(tmp_path, vocab_dir):
    bad = run_cli("init", "gpt5", str(tmp_path / "x"), "--tokenizer-dir", str(vocab_dir))
    assert bad.returncode == 2 and "Unknown preset 'gpt5'" in bad.stderr
    unknown = run_cli(
        "init", "tiny", str(tmp_path / "y"), "--set", "n_layers=2", "--tokenizer-dir", str(vocab_dir)
    )
    assert unknown.returncode == 2 and "n_layers" in unknown.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    missing = run_cli("generate", str(tmp_path / "nope"), "--prompt", "hi")
    assert missing.returncode == 2 and "does not exist" in missing.stderr


@pytest.fixture(scope="module")
def ours_folders(tmp_path_factory, vocab_dir):
    """A gpt2scratch causal LM, a classifier, and a LoRA classification adapter on that classifier."""
    from gpt2scratch import GPT2ScratchConfig, GPT2ScratchForCausalLM, GPT2ScratchForSequenceClassification
    from gpt2scratch.io import save_model_folder
    from gpt2scratch.training.lora import add_lora

    root = tmp_path_factory.mktemp("ours")
    config = GPT2ScratchConfig.from_preset("tiny", vocab_size=50257, num_labels=3)
    lm = save_model_folder(GPT2ScratchForCausalLM(config), root / "lm", vocab_dir)
    classifier = save_model_folder(GPT2ScratchForSequenceClassification(config), root / "sms", vocab_dir)
    peft = add_lora(GPT2ScratchForSequenceClassification.from_pretrained(classifier), "classification",
                    ["c_attn"], r=4, alpha=8, dropout=0.0)  # fmt: skip
    peft.peft_config["default"].base_model_name_or_path = str(classifier)
    peft.save_pretrained(root / "sms-lora")
    return {"lm": lm, "classifier": classifier, "adapter": root / "sms-lora"}


def test_convert_hf_refuses_a_gpt2scratch_folder_naming_its_model_type(ours_folders, tmp_path, cli):
    code, _, err = cli("convert-hf", str(ours_folders["lm"]), str(tmp_path / "y"))
    assert code == 2 and err.count("\n") == 1, err
    assert str(ours_folders["lm"]) in err and "model_type 'gpt2scratch'" in err
    assert not (tmp_path / "y").exists()


def test_export_hf_refuses_a_classifier_instead_of_dropping_its_head(ours_folders, tmp_path, cli):
    code, _, err = cli("export-hf", str(ours_folders["classifier"]), str(tmp_path / "x"))
    assert code == 2 and err.count("\n") == 1, err
    assert "GPT2ScratchForSequenceClassification" in err and "drop its head" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("cut", ["header", "tail"])
@pytest.mark.parametrize("command", ["generate", "export-hf"])
def test_a_damaged_weights_file_is_one_line_naming_the_folder(ours_folders, tmp_path, cli, command, cut):
    """A model.safetensors cut short (a copy or download interrupted) is a one-line error naming the folder
    (exit 2), not safetensors' traceback."""
    import shutil

    folder = tmp_path / "damaged"
    shutil.copytree(ours_folders["lm"], folder)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:1000] if cut == "header" else data[:-100])
    args = {
        "generate": ["--prompt", "hi", "--max-new-tokens", "2"],
        "export-hf": [str(tmp_path / "x")],
        "info": [],
    }
    code, _, err = cli(command, str(folder), *args[command])
    if command == "info" and code == 0:
        return  # info reads the config only
    assert code == 2 and err.count("\n") == 1, err
    assert f"{folder}: a weights file is damaged or incomplete" in err
    assert not (tmp_path / "x").exists()


def test_a_tokenizer_larger_than_the_models_vocabulary_is_refused_before_anything_runs(
    tmp_path, vocab_dir, tiny_config, cli, shared_data
):
    """Another model's tokenizer (GPT-2's 50,257 tokens for a model of 1,000) is refused up front, naming it:
    finetune wrote its run files and then failed at the first batch, leaving a folder that blocked the rerun."""
    from gpt2scratch import GPT2ScratchConfig, GPT2ScratchForCausalLM

    small = tmp_path / "small"
    GPT2ScratchForCausalLM(
        GPT2ScratchConfig(**{**tiny_config.to_dict(), "vocab_size": 1000})
    ).save_pretrained(small)
    message = f"the tokenizer in {vocab_dir} has 50257 tokens, more than this model's vocab_size=1000"
    code, _, err = cli("generate", str(small), "--prompt", "hi", "--tokenizer-dir", str(vocab_dir))
    assert code == 2 and message in err, err
    text = shared_data / "corpora" / "the-verdict.txt"
    out = tmp_path / "run"
    code, _, err = cli("finetune", "--task", "lm", "--model", str(small), "--tokenizer-dir", str(vocab_dir),
                       "--train-file", str(text), "--output-dir", str(out), "--max-steps", "1")  # fmt: skip
    assert code == 2 and message in err, err
    assert not out.exists()


@pytest.mark.parametrize("src", ["runs/nope", "/no/such/folder"])
def test_export_hf_of_a_missing_folder_does_not_try_the_hub(src, tmp_path, cli, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = cli("export-hf", src, str(tmp_path / "z"))
    assert code == 2 and err.count("\n") == 1 and f"{src} does not exist" in err, err
    assert ("hf download" in err) == (src == "runs/nope")  # a name that could be a Hub repository id
    assert not (tmp_path / "z").exists()


def test_info_describes_each_model_as_its_own_class(ours_folders, cli):
    from gpt2scratch import GPT2ScratchForSequenceClassification

    code, out, err = cli("info", str(ours_folders["classifier"]))
    info = json.loads(out)
    assert code == 0 and info["class"] == "GPT2ScratchForSequenceClassification"
    expected = GPT2ScratchForSequenceClassification.from_pretrained(
        ours_folders["classifier"]
    ).num_parameters()
    assert info["parameters"] == expected

    code, out, err = cli("info", str(ours_folders["adapter"]))
    info = json.loads(out)
    assert code == 0 and "UNEXPECTED" not in err and "LOAD REPORT" not in err
    assert (info["kind"], info["class"], info["parameters"]) == (
        "adapter",
        "GPT2ScratchForSequenceClassification",
        expected,
    )
    assert info["adapter"]["r"] == 4 and info["adapter"]["base_model"] == str(ours_folders["classifier"])


def test_info_on_an_adapter_counts_its_trainable_parameters(ours_folders, cli):
    """The base's parameters and, apart, the adapter's: what PEFT trains (LoRA matrices + the score copy)."""
    from peft import PeftModel

    from gpt2scratch import GPT2ScratchForSequenceClassification

    code, out, err = cli("info", str(ours_folders["adapter"]))
    assert code == 0, err
    info = json.loads(out)
    base = GPT2ScratchForSequenceClassification.from_pretrained(ours_folders["classifier"])
    assert info["parameters"] == base.num_parameters()
    peft = PeftModel.from_pretrained(base, ours_folders["adapter"], is_trainable=True)
    trainable, _ = peft.get_nb_trainable_parameters()
    assert info["adapter"]["parameters"] == trainable > 0


def test_info_needs_no_tokenizer(hf_folder, tmp_path, cli):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((hf_folder / name).read_bytes())
    code, out, err = cli("info", str(bare))
    assert code == 0, err
    info = json.loads(out)
    assert (info["kind"], info["class"], info["tokenizer_dir"]) == ("hf-gpt2", "GPT2ScratchForCausalLM", None)
    assert info["parameters"] == GPT2LMHeadModel.from_pretrained(bare).num_parameters()


def stdin_of(monkeypatch, data: bytes):
    """Standard input replaced by ``data`` for the test (returned, to be given more attributes)."""
    import io
    import sys

    stdin = io.TextIOWrapper(io.BytesIO(data))
    monkeypatch.setattr(sys, "stdin", stdin)
    return stdin


def _spy_generate(monkeypatch) -> list:
    """Record the prompt ids and the output of every ``GPT2ScratchForCausalLM.generate`` call."""
    from gpt2scratch import GPT2ScratchForCausalLM

    calls, original = [], GPT2ScratchForCausalLM.generate

    def generate(self, inputs=None, *args, **kwargs):
        out = original(self, inputs, *args, **kwargs)
        calls.append((inputs.clone(), out))
        return out

    monkeypatch.setattr(GPT2ScratchForCausalLM, "generate", generate)
    return calls


INSTRUCTION = ("Rewrite the sentence in the passive voice.", "The chef cooked the meal.")


@pytest.mark.parametrize("fields", [INSTRUCTION, INSTRUCTION[:1]])
def test_generate_instruction_prompts_with_the_training_template(
    fields, ours_folders, vocab_dir, cli, monkeypatch
):
    """The model gets exactly the tokens of training's Alpaca prompt; only the response is printed."""
    from gpt2scratch.training.data import format_prompt

    calls = _spy_generate(monkeypatch)
    args = ["--instruction", fields[0], *(["--input", fields[1]] if len(fields) > 1 else [])]
    code, out, err = cli("generate", str(ours_folders["lm"]), *args, "--max-new-tokens", "8")
    assert code == 0, err
    tok = hf_tokenizer(vocab_dir)
    expected = tok(format_prompt(*fields), return_tensors="pt").input_ids
    ((ids, generated),) = calls
    assert torch.equal(ids, expected)
    assert out == tok.decode(generated[0, ids.shape[1] :], skip_special_tokens=True) + "\n"


def test_generate_instruction_option_errors(ours_folders, cli):
    code, _, err = cli("generate", str(ours_folders["lm"]), "--prompt", "hi", "--input", "x")
    assert code == 2 and err.count("\n") == 1 and "--input" in err and "--instruction" in err, err
    with pytest.raises(SystemExit):  # argparse: one of the two, not both
        cli("generate", str(ours_folders["lm"]), "--prompt", "hi", "--instruction", "x")
    code, _, err = cli("generate", str(ours_folders["lm"]), "--instruction", " ")
    assert code == 2 and err.count("\n") == 1 and "--instruction is empty" in err, err


@pytest.mark.parametrize("name", ["classifier", "adapter"])
def test_generate_from_a_classifier_uses_its_backbone_quietly(
    name, ours_folders, vocab_dir, cli, transformers_log
):
    """A classifier's backbone with the LM head tied to its token embeddings: the same tokens as the
    classifier's weights loaded into a causal LM, one note, and no transformers load report."""
    from gpt2scratch import GPT2ScratchForCausalLM, GPT2ScratchForSequenceClassification

    code, out, err = cli(
        "generate", str(ours_folders[name]), "--prompt", "Hello world", "--max-new-tokens", "6"
    )
    assert code == 0, err
    assert not [m for m in transformers_log if "LOAD REPORT" in m], transformers_log
    notes = [line for line in err.splitlines() if "gpt2scratch generate" in line]
    assert len(notes) == 1 and "classifier" in notes[0] and "backbone" in notes[0], err
    classifier = GPT2ScratchForSequenceClassification.from_pretrained(ours_folders["classifier"])
    lm = GPT2ScratchForCausalLM(classifier.config).eval()
    assert lm.load_state_dict(classifier.state_dict(), strict=False).missing_keys == ["lm_head.weight"]
    tok = hf_tokenizer(vocab_dir)
    ids = tok("Hello world", return_tensors="pt").input_ids
    expected = lm.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=50256)
    assert out == tok.decode(expected[0]) + "\n"


def test_generate_refuses_a_classifier_without_tied_embeddings(tmp_path, vocab_dir, cli):
    from gpt2scratch import GPT2ScratchConfig, GPT2ScratchForSequenceClassification
    from gpt2scratch.io import save_model_folder

    config = GPT2ScratchConfig.from_preset("tiny", vocab_size=50257, tie_word_embeddings=False)
    folder = save_model_folder(GPT2ScratchForSequenceClassification(config), tmp_path / "untied", vocab_dir)
    code, out, err = cli("generate", str(folder), "--prompt", "Hello", "--max-new-tokens", "2")
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert "untied" in err and "no language-model head" in err


def test_an_adapter_whose_base_is_gone_is_one_clear_error(tmp_path, capsys):
    """Loading and describing share one check: the missing base named, with how to point at it."""
    from gpt2scratch.loading import load_model

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "./base"}))
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(
        FileNotFoundError, match=r"base model of adapter .* is missing: set base_model_name_or_path"
    ):
        load_model(adapter)
    assert main(["info", str(adapter)]) == 2
    assert "is missing: set base_model_name_or_path" in capsys.readouterr().err


def test_an_adapter_or_its_base_without_weights_is_one_clear_error(tmp_path, vocab_dir, tiny_config, cli):
    """What a save cut short leaves, in the adapter folder or in its ``base/``: one line naming the folder."""
    adapter = tmp_path / "adapter"
    lora = {"peft_type": "LORA", "target_modules": ["c_attn"], "r": 2, "lora_alpha": 4}
    (adapter / "base").mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({**lora, "base_model_name_or_path": "base"}))
    tiny_config.save_pretrained(adapter / "base")
    for folder, config in [(adapter, "adapter_config.json"), (adapter / "base", "config.json")]:
        code, out, err = cli("generate", str(adapter), "--tokenizer-dir", str(vocab_dir), "--prompt", "Hi")
        assert code == 2 and out == "" and err.count("\n") == 1, err
        assert f"{folder} has {config} but no weights" in err
        (adapter / "adapter_model.safetensors").write_bytes(b"")  # the adapter's weights now "exist"


def test_generate_num_samples_prints_each_sample_in_turn(ours_folders, cli, monkeypatch):
    """--num-samples N: N sampled continuations, one generate() call each after one seed, separated by a
    line; the same seed gives the same texts."""
    from gpt2scratch.model_commands import SAMPLE_SEPARATOR

    calls = _spy_generate(monkeypatch)
    args = ["generate", str(ours_folders["lm"]), "--prompt", "Once upon", "--max-new-tokens", "5"]
    args += ["--temperature", "0.9", "--num-samples", "3", "--seed", "1"]
    code, out, err = cli(*args)
    assert code == 0, err
    texts = out.split(SAMPLE_SEPARATOR + "\n")
    assert len(texts) == 3 and len(calls) == 3 and all(t.startswith("Once upon") for t in texts)
    assert len({tuple(generated[0].tolist()) for _, generated in calls}) == 3  # sampled, not repeated
    assert cli(*args)[1] == out


def test_generate_prompt_file_and_stdin_equal_the_prompt_option(ours_folders, cli, tmp_path, monkeypatch):
    text = "The café was quiet.\nThen"
    (tmp_path / "prompt.txt").write_text(text, encoding="utf-8")
    base = ["generate", str(ours_folders["lm"]), "--max-new-tokens", "6"]
    code, expected, err = cli(*base, "--prompt", text)
    assert code == 0 and expected.startswith(text), err
    assert cli(*base, "--prompt-file", str(tmp_path / "prompt.txt"))[1] == expected
    stdin_of(monkeypatch, text.encode())
    assert cli(*base, "--prompt-file", "-")[1] == expected


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prompt", "x", "--num-samples", "0"], "--num-samples must be at least 1"),
        (["--prompt", "x", "--num-samples", "2"], "greedy) would print the same text 2 times"),
        (["--prompt-file", "no-such.txt"], "--prompt-file no-such.txt does not exist"),
        (["--prompt-file", "latin1.txt"], "latin1.txt, line 2: byte 0xe9 is not UTF-8"),
    ],
)
def test_generate_sample_and_prompt_file_errors(args, message, ours_folders, cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "latin1.txt").write_bytes("one\ncaf\u00e9".encode("latin-1"))
    code, out, err = cli("generate", str(ours_folders["lm"]), *args)
    assert code == 2 and out == "" and err.count("\n") == 1 and message in err, err


def test_chat_answers_each_line_as_generate_instruction_does(ours_folders, vocab_dir, cli, monkeypatch):
    """Each non-empty line is one Alpaca instruction: the same prompt ids and printed response as
    ``generate --instruction`` for it; blank lines are skipped, and ``quit`` ends the session."""
    from gpt2scratch.training.data import format_prompt

    lm, instructions = str(ours_folders["lm"]), ("Say hello.", "Name a colour.")
    expected = "".join(
        cli("generate", lm, "--instruction", text, "--max-new-tokens", "6")[1] for text in instructions
    )
    calls = _spy_generate(monkeypatch)
    lines = "Say hello.\n\n  \nName a colour.\nquit\nNot an instruction.\n"
    stdin_of(monkeypatch, lines.encode())
    code, out, err = cli("chat", lm, "--max-new-tokens", "6")
    assert code == 0, err
    assert out == expected
    tok = hf_tokenizer(vocab_dir)
    assert [ids[0].tolist() for ids, _ in calls] == [
        tok(format_prompt(text)).input_ids for text in instructions
    ]
    assert all(generated.shape[1] <= ids.shape[1] + 6 for ids, generated in calls)


def test_chat_at_a_terminal_ctrl_c_stops_one_response(ours_folders, cli, monkeypatch):
    from gpt2scratch.model_commands import Generator

    answered, original = [], Generator.stream

    def stream(self, text, response_only):
        if not answered:
            answered.append("interrupted")
            raise KeyboardInterrupt
        answered.append(text)
        return original(self, text, response_only)

    monkeypatch.setattr(Generator, "stream", stream)
    stdin_of(monkeypatch, b"First.\nSecond.\n").isatty = lambda: True
    code, _, err = cli("chat", str(ours_folders["lm"]), "--max-new-tokens", "2")
    assert code == 0 and "(stopped)" in err and "> " in err, err
    assert answered[0] == "interrupted" and "Second." in answered[1]
    stdin_of(monkeypatch, b"First.\n")  # piped: Ctrl-C ends it
    answered.clear()
    code, _, err = cli("chat", str(ours_folders["lm"]))
    assert code == 130 and "interrupted" in err


def test_generate_repetition_penalty_reaches_generate(ours_folders, vocab_dir, cli):
    """--repetition-penalty gives what transformers' generate(repetition_penalty=...) gives."""
    from gpt2scratch import GPT2ScratchForCausalLM

    args = ["generate", str(ours_folders["lm"]), "--prompt", "Hello world", "--max-new-tokens", "12"]
    code, out, err = cli(*args, "--repetition-penalty", "3.0")
    assert code == 0, err
    model = GPT2ScratchForCausalLM.from_pretrained(ours_folders["lm"]).eval()
    tok = hf_tokenizer(vocab_dir)
    ids = tok("Hello world", return_tensors="pt").input_ids
    penalised = model.generate(ids, max_new_tokens=12, repetition_penalty=3.0, pad_token_id=50256)
    plain = model.generate(ids, max_new_tokens=12, pad_token_id=50256)
    assert out == tok.decode(penalised[0]) + "\n" and not torch.equal(penalised, plain)


def test_generate_stops_at_a_stop_string(ours_folders, vocab_dir, cli, monkeypatch):
    """--stop TEXT: generation ends with the token that completes TEXT, which is printed."""
    calls = _spy_generate(monkeypatch)
    args = ["generate", str(ours_folders["lm"]), "--prompt", "Hello world", "--max-new-tokens", "12"]
    code, full, err = cli(*args)
    assert code == 0, err
    (ids, generated), tok = calls.pop(), hf_tokenizer(vocab_dir)
    stop = tok.decode(generated[0, ids.shape[1] + 1 : ids.shape[1] + 4])  # new tokens 2 to 4
    code, out, err = cli(*args, "--stop", stop)
    assert code == 0, err
    (_, stopped) = calls.pop()
    assert stopped.shape[1] <= ids.shape[1] + 4 and torch.equal(stopped[0], generated[0, : stopped.shape[1]])
    assert stop in out and full.startswith(out[:-1])
    assert cli(*args, "--stop", "")[2].endswith("--stop needs a non-empty TEXT.\n")
