"""Push a model folder (or a PEFT adapter folder) made by this package to the Hugging Face Hub.

Everything that can be checked locally is checked before the first request: the folder is complete
(config, weights, the two code files, tokenizer files), an adapter names its base model by a Hub id,
and a token is available. The folder then goes up in one commit (``create_repo(exist_ok=True)``,
``create_branch(exist_ok=True)`` for ``--revision``, ``upload_folder``; with ``--create-pr`` the commit
opens a pull request instead), with a model card ``README.md`` written first when the folder has none
(or only PEFT's empty template). Pushing again updates the repository in place: only changed files are
committed, and weight files the folder no longer has are deleted so that stale weights never load.

:func:`finish_run` is what ``finetune`` calls at the end of a finished run (main process only): it writes
the run's model card and, with ``--push-to-hub REPO_ID``, pushes the final model, or a LoRA adapter
after its base model (to ``REPO_ID-base``, which the pushed adapter then names).

What is uploaded is a staging view of the folder (links, not copies): training-run leftovers
(``checkpoint-*/``, ``base/``, ``data/``, hidden files) stay behind, the card's placeholder repo id
becomes the real one, and an adapter's ``base_model_name_or_path`` becomes the Hub id, while the local
files keep pointing at the local base so the folder still loads where it is.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import yaml

from .cli import CommandError
from .model_card import PLOTS, REPO_PLACEHOLDER, model_card

CODE_FILES = ("configuration_gpt2scratch.py", "modeling_gpt2scratch.py")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# Left out of the upload: a training run's checkpoints, the LoRA base copy, data splits, its best model so far
# (finetune --save-best), temp files.
EXCLUDED_DIRS = re.compile(r"^(checkpoint-\d+|base|data|best|__pycache__)$")
REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
log = logging.getLogger(__name__)
# training_args.yaml entries that describe the machine or the paths, not the training.
NOT_TRAINING = {
    "output_dir", "resume_from", "tokenizer_dir", "config", "force", "stop_after", "log_every", "push_to_hub",
}  # fmt: skip
# Deleted on the Hub when the pushed folder does not have them: a stale model.safetensors beside new
# shards (or the reverse) would be loaded instead of the pushed weights.
WEIGHT_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json"]


class HubUnreachableError(CommandError):
    """The Hub endpoint could not be reached (network, proxy, ``HF_ENDPOINT``); nothing was uploaded."""

    exit_code = 2


# --- checks (no network) ---------------------------------------------------------------------------


def is_adapter_folder(folder: Path) -> bool:
    return (folder / "adapter_config.json").is_file()


def check_folder(folder: Path) -> None:
    """Raise FileNotFoundError naming every file a loadable model (or adapter) folder lacks."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; pass the model folder to push.")
    if is_adapter_folder(folder):
        needed = [*ADAPTER_FILES, *TOKENIZER_FILES]
    else:
        needed = ["config.json", *CODE_FILES, *TOKENIZER_FILES]
        if not _has_weights(folder):
            needed.append("model.safetensors")
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        kind = "PEFT adapter folder" if is_adapter_folder(folder) else "model folder"
        raise FileNotFoundError(
            f"{folder} is not a complete {kind}: missing {', '.join(missing)}. Write it with "
            "gpt2scratch (convert-openai, convert-hf, init, finetune, or io.save_model_folder) and push that "
            "folder; nothing was uploaded."
        )
    if not is_adapter_folder(folder):
        _check_auto_map(folder / "config.json")


def _check_auto_map(config_file: Path) -> None:
    """Without ``auto_map`` naming the shipped code, ``trust_remote_code`` has nothing to load."""
    config = json.loads(config_file.read_text(encoding="utf-8"))
    auto_map = config.get("auto_map") or {}
    if config.get("model_type") != "gpt2scratch" or "AutoModelForCausalLM" not in auto_map:
        raise ValueError(
            f"{config_file} is not a gpt2scratch config with an auto_map (model_type {config.get('model_type')!r}, "
            f"auto_map {sorted(auto_map)}), so the pushed model could not be loaded with trust_remote_code. "
            "Re-save the model with gpt2scratch.io.save_model_folder; nothing was uploaded."
        )


def _has_weights(folder: Path) -> bool:
    """``model.safetensors``, or a safetensors index whose shards are all present."""
    if (folder / "model.safetensors").is_file():
        return True
    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        return False
    shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
    return all((folder / shard).is_file() for shard in shards)


def check_repo_id(repo_id: str, what: str = "REPO_ID") -> None:
    if not REPO_ID.match(repo_id) or "--" in repo_id or ".." in repo_id:
        raise ValueError(
            f"{what} {repo_id!r} is not a Hub repository id; use 'namespace/name' (e.g. 'alice/gpt2-spam')."
        )


def looks_local(name: str, folder: Path) -> bool:
    """Whether an adapter's ``base_model_name_or_path`` is a local path rather than a Hub id."""
    if os.path.isabs(name) or name.startswith((".", "~")) or "\\" in name:
        return True
    return Path(name).expanduser().is_dir() or (folder / name).is_dir() or not REPO_ID.match(name)


def _local_base(name: str, folder: Path) -> str:
    """The recorded local base path, absolute: a relative one is taken from the adapter folder (as finetune
    writes it, ``./base``) and only where nothing is there from the working directory (as plain PEFT reads it)."""
    path = Path(name).expanduser()
    if path.is_absolute():
        return str(path)
    beside = (folder / path).resolve()
    return str(beside if beside.is_dir() or not path.is_dir() else path.resolve())


def recorded_base(folder: Path) -> tuple[str | None, str | None]:
    """(the base model an adapter folder records, that base as a local folder or None when it is a Hub id)."""
    recorded = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8")).get(
        "base_model_name_or_path"
    )
    return recorded, _local_base(recorded, folder) if recorded and looks_local(recorded, folder) else None


def adapter_base(folder: Path, base_model_id: str | None) -> tuple[str, str | None]:
    """(Hub id the pushed adapter will name, local base folder or None); refuses a local-only base."""
    recorded, local = recorded_base(folder)
    if base_model_id:
        check_repo_id(base_model_id, "--base-model-id")
        return base_model_id, local
    if not recorded or local:
        where = (
            f"by the local path {recorded!r}, which nobody loading from the Hub can open"
            if recorded
            else "at all"
        )
        raise ValueError(
            f"{folder / 'adapter_config.json'} does not name its base model by a Hub id ({where}). Push the base "
            "model first and pass its Hub id with --base-model-id (e.g. --base-model-id alice/gpt2-base); "
            "nothing was uploaded."
        )
    return recorded, None


def resolve_token(token: str | None) -> str:
    """The token to push with: ``token``, else ``HF_TOKEN`` or the one saved by ``hf auth login``."""
    from huggingface_hub import constants, get_token

    if constants.HF_HUB_OFFLINE:
        raise ValueError("HF_HUB_OFFLINE is set, so nothing can be pushed; unset it and try again.")
    token = token or get_token()
    if not token:
        raise PermissionError(
            "No Hugging Face token: pass --token, set HF_TOKEN, or run `hf auth login` (the token needs write access)."
        )
    return token


# --- the card --------------------------------------------------------------------------------------


def card_for(folder: Path, repo_id: str | None, base_model_id: str | None, base_dir: str | None) -> str:
    """A model card for ``folder``: architecture from its config (an adapter's: its base's), and the
    training options, metrics and plots when the folder is a ``gpt2scratch finetune`` output. The
    title is the repository's name (the folder's when ``repo_id`` is None)."""
    from .configuration_gpt2scratch import GPT2ScratchConfig

    adapter = is_adapter_folder(folder)
    if adapter:
        source = base_dir if base_dir and Path(base_dir).is_dir() else base_model_id
    config = GPT2ScratchConfig.from_pretrained(source if adapter else folder)
    classifier = "GPT2ScratchForSequenceClassification" in (config.architectures or [])
    training, metrics = _run_files(folder)
    name = repo_id.split("/")[-1] if repo_id else folder.resolve().name
    card = model_card(
        config,
        title=f"{name}{' (LoRA adapter)' if adapter else ''}",
        source=_source(training, adapter, base_model_id),
        training=training,
        metrics=metrics,
        base_model=base_model_id,
        pipeline_tag="text-classification" if classifier else "text-generation",
        plots=[p for p in PLOTS if (folder / p).is_file()],
        model_name=name,
    )
    return _as_adapter_card(card, classifier) if adapter else card


def _as_adapter_card(card: str, classifier: bool) -> str:
    """The card of an adapter repository: PEFT as the library, tagged ``peft``/``lora``, and how to load it."""
    meta, body = split_card(card)
    meta["library_name"] = "peft"
    meta["tags"] = [*meta["tags"], "peft", "lora"]
    return join_card(meta, body + _adapter_usage(classifier))


def split_card(card: str) -> tuple[dict, str]:
    """(YAML metadata, Markdown body) of a card; metadata {} when it has no front matter."""
    if not card.startswith("---\n") or card.count("---\n") < 2:
        return {}, card
    _, front, body = card.split("---\n", 2)
    return yaml.safe_load(front) or {}, body


def join_card(meta: dict, body: str) -> str:
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n" + body


def write_card(folder: Path, repo_id: str | None = None) -> bool:
    """Write ``folder``'s model card unless it has one (PEFT's empty template does not count); True if written.
    An adapter whose base is only known locally gets a card without ``base_model``; ``push`` adds it."""
    folder = Path(folder)
    if not needs_card(folder):
        return False
    hub_base, local_base = None, None
    if is_adapter_folder(folder):
        recorded, local_base = recorded_base(folder)
        hub_base = None if local_base else recorded
    card = card_for(folder, repo_id, hub_base, local_base)
    (folder / "README.md").write_text(
        card.replace(REPO_PLACEHOLDER, repo_id) if repo_id else card, encoding="utf-8"
    )
    return True


def needs_card(folder: Path) -> bool:
    """No README.md, or only the empty template PEFT's ``save_pretrained`` writes beside an adapter."""
    readme = folder / "README.md"
    if not readme.is_file():
        return True
    text = readme.read_text(encoding="utf-8", errors="replace")
    return "# Model Card for Model ID" in text and "[More Information Needed]" in text


def _run_files(folder: Path) -> tuple[dict | None, dict | None]:
    """The training options (``training_args.yaml``) and ``metrics.json`` of a finetune run folder."""
    training = metrics = None
    args_file, metrics_file = folder / "training_args.yaml", folder / "metrics.json"
    if args_file.is_file():
        raw = yaml.safe_load(args_file.read_text(encoding="utf-8")) or {}
        training = {
            k: _basename_if_path(k, v) for k, v in raw.items() if v is not None and k not in NOT_TRAINING
        }
    if metrics_file.is_file():
        metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
    return training, metrics


def _basename_if_path(key: str, value):
    """Local files and folders by name only: the Hub should not get the trainer's directory layout."""
    if value is None:
        return value
    if key.endswith(("_file", "_dir")) or key in ("resume_from", "config"):
        return Path(value).name
    if key == "model" and (os.path.isabs(str(value)) or Path(str(value)).exists()):
        return Path(value).name
    return value


def _source(training: dict | None, adapter: bool, base_model_id: str | None) -> str:
    if training:
        text = (
            f"Fine-tuned with `gpt2scratch finetune` (task `{training.get('task')}`, method `{training.get('method')}`) "
            f"starting from `{training.get('model')}`; the options and the measured metrics are listed below."
        )
    else:
        text = (
            "Pushed with `gpt2scratch push` from a model folder written by gpt2scratch. This card was generated "
            "at push time and does not know how the weights were obtained: edit this section to say so."
        )
    if base_model_id:
        text += f" Base model: [{base_model_id}](https://huggingface.co/{base_model_id})."
    if adapter:
        text += " This repository holds LoRA adapter weights only; the base model is loaded from its own repository."
    return text


def _adapter_usage(classifier: bool) -> str:
    cls = "AutoPeftModelForSequenceClassification" if classifier else "AutoPeftModelForCausalLM"
    return f"""
## Loading the adapter

```python
from peft import {cls}
model = {cls}.from_pretrained("{REPO_PLACEHOLDER}", revision="main", trust_remote_code=True)
merged = model.merge_and_unload()  # a plain gpt2scratch model, no PEFT needed afterwards
```

The base model's code runs with `trust_remote_code=True` as above: pin both repositories to commits you
reviewed (`revision=` here, and `"revision"` in `adapter_config.json` for the base).
"""


# --- staging and upload ----------------------------------------------------------------------------


def files_to_upload(folder: Path) -> list[Path]:
    """Files under ``folder`` that belong on the Hub (relative paths), run leftovers excluded."""
    chosen = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not EXCLUDED_DIRS.match(d))
        rel = Path(root).relative_to(folder)
        chosen += [rel / f for f in sorted(files) if not f.startswith(".")]
    return chosen


def stage(folder: Path, staging: Path, repo_id: str, base_model_id: str | None) -> None:
    """Fill ``staging`` with links to the files to upload, and rewritten copies of the card and the
    adapter config (placeholder -> ``repo_id``; base model -> ``base_model_id``) and of a run's
    ``training_args.yaml`` (local paths by name only)."""
    for rel in files_to_upload(folder):
        target = staging / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if rel == Path("README.md"):
            text = (folder / rel).read_text(encoding="utf-8").replace(REPO_PLACEHOLDER, repo_id)
            meta, body = split_card(text)
            if base_model_id and meta and not meta.get("base_model"):
                text = join_card({**meta, "base_model": base_model_id}, body)
            target.write_text(text, encoding="utf-8")
        elif rel == Path("training_args.yaml"):
            raw = yaml.safe_load((folder / rel).read_text(encoding="utf-8")) or {}
            names = {k: _basename_if_path(k, v) for k, v in raw.items()}
            target.write_text(yaml.safe_dump(names, sort_keys=False), encoding="utf-8")
        elif rel == Path("adapter_config.json") and base_model_id:
            config = json.loads((folder / rel).read_text(encoding="utf-8"))
            config["base_model_name_or_path"] = base_model_id
            target.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        else:
            _link(folder / rel, target)


def _staging_parent(folder: Path) -> str | None:
    """Beside ``folder`` (same file system, so files are linked, not copied) when writable, else the temp dir."""
    return str(folder.parent) if os.access(folder.parent, os.W_OK) else None


def _link(source: Path, target: Path) -> None:
    try:
        os.link(os.path.realpath(source), target)
    except OSError:  # another file system, or links not allowed: copy
        shutil.copy2(source, target)


def push_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    base_model_id: str | None = None,
) -> str:
    """Upload ``folder`` to the Hub repository ``repo_id`` (created if needed) in one commit, to
    ``revision`` (a branch, created from main if needed) or as a pull request against main; returns the
    URL of the repository (of the pull request with ``create_pr``). Checks run before any request;
    auth failures become PermissionError, an unreachable Hub HubUnreachableError."""
    folder = Path(folder)
    check_repo_id(repo_id)
    if create_pr and revision not in (None, "main"):
        raise ValueError(
            f"--create-pr opens a pull request against main, so it cannot go with --revision {revision}; "
            "leave out one of the two."
        )
    check_folder(folder)
    hub_base, local_base = (
        adapter_base(folder, base_model_id) if is_adapter_folder(folder) else (base_model_id, None)
    )
    if base_model_id and not is_adapter_folder(folder):
        check_repo_id(base_model_id, "--base-model-id")
    token = resolve_token(token)
    if needs_card(folder):
        card = card_for(folder, repo_id, hub_base, local_base)
        (folder / "README.md").write_text(card.replace(REPO_PLACEHOLDER, repo_id), encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix=f".{folder.name}.push-", dir=_staging_parent(folder)) as staging:
        stage(folder, Path(staging), repo_id, hub_base if is_adapter_folder(folder) else None)
        return _upload(
            Path(staging),
            repo_id,
            private,
            token,
            commit_message or f"Upload {folder.name} with gpt2scratch",
            None if revision == "main" else revision,
            create_pr,
        )


def _upload(
    staging: Path,
    repo_id: str,
    private: bool,
    token: str,
    message: str,
    revision: str | None,
    create_pr: bool,
) -> str:
    import httpx2  # huggingface_hub's HTTP client
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token)
    try:
        # private=None leaves a new repository at its namespace's default visibility
        url = str(api.create_repo(repo_id, private=private or None, exist_ok=True))
        if revision and not revision.startswith("refs/pr/"):  # an open pull request's ref already exists
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=staging,
            commit_message=message,
            revision=revision,
            create_pr=create_pr,
            delete_patterns=WEIGHT_PATTERNS,
        )
    except HfHubHTTPError as e:
        raise _explain(e, repo_id, revision) from e
    except httpx2.TransportError as e:
        raise HubUnreachableError(
            f"Could not reach the Hub at {api.endpoint} ({e}); check the network, proxy settings and "
            "HF_ENDPOINT, then push again (a push commits only what changed)."
        ) from e
    if commit.pr_url:
        return commit.pr_url
    return f"{url}/tree/{revision}" if revision else url


def _explain(error, repo_id: str, revision: str | None) -> Exception:
    """A one-line, actionable error for the Hub's refusals; other errors pass through unchanged."""
    from huggingface_hub.errors import RevisionNotFoundError

    status = error.response.status_code if error.response is not None else None
    server = (error.server_message or "").strip().splitlines()[0:1]
    detail = f" (the Hub said: {server[0]})" if server else ""
    if status == 401:
        return PermissionError(
            f"The Hub rejected the token (401){detail}. Check it with `hf auth whoami`, or pass a valid token with --token."
        )
    if status == 403:
        return PermissionError(
            f"The token may not write to {repo_id} (403){detail}. Use a token with write access to that namespace."
        )
    if isinstance(error, RevisionNotFoundError):
        return ValueError(f"{repo_id} has no revision {revision!r}{detail}; check --revision.")
    if status == 400:
        return ValueError(f"The Hub refused the upload to {repo_id} (400){detail}.")
    return error


# --- command line ----------------------------------------------------------------------------------


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "push",
        help="upload a model or adapter folder to the Hugging Face Hub",
        description="Upload a model folder (or PEFT adapter folder) made by gpt2scratch to the Hub, with a "
        "model card README.md written first when the folder has none.",
    )
    p.add_argument("folder", metavar="FOLDER", help="model folder, finetune output folder, or adapter folder")
    p.add_argument(
        "repo_id", metavar="REPO_ID", help="Hub repository, e.g. alice/gpt2-spam (created if missing)"
    )
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--token", help="Hub token with write access (default: HF_TOKEN or `hf auth login`)")
    p.add_argument(
        "--base-model-id", help="Hub id of the base model (required for an adapter with a local base)"
    )
    p.add_argument("--commit-message", help="commit summary (default: 'Upload FOLDER with gpt2scratch')")
    p.add_argument("--revision", help="branch to commit to (created from main when missing; default: main)")
    p.add_argument(
        "--create-pr",
        action="store_true",
        help="open a pull request against main instead of committing to it",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> None:
    url = push_to_hub(
        args.folder,
        args.repo_id,
        private=args.private,
        token=args.token,
        commit_message=args.commit_message,
        revision=args.revision,
        create_pr=args.create_pr,
        base_model_id=args.base_model_id,
    )
    print(f"{'opened a pull request with' if args.create_pr else 'pushed'} {args.folder}: {url}")


# --- the end of a finetune run -----------------------------------------------------------------------


def finish_run(folder: str | os.PathLike, repo_id: str | None) -> str | None:
    """End of a finished ``finetune`` run, on the main process only: write the run folder's model card,
    and with ``repo_id`` (``--push-to-hub``) push the run; returns the URL pushed to."""
    folder = Path(folder)
    if not repo_id:
        if write_card(folder):
            log.info("model card: %s", folder / "README.md")
        return None
    try:
        url = push_run(folder, repo_id)
        log.info("pushed %s to %s", folder, url)
        return url
    except (ValueError, FileNotFoundError, PermissionError, HubUnreachableError) as e:
        raise type(e)(
            f"{e} The run itself finished and is saved in {folder}: push it later with "
            f"`gpt2scratch push {folder} {repo_id}`."
        ) from e


def push_run(folder: Path, repo_id: str) -> str:
    """Push a finetune output folder: a model folder as is; a LoRA adapter after its local base model,
    which goes to ``REPO_ID-base`` so that the adapter can name it by a Hub id."""
    check_repo_id(repo_id, "--push-to-hub")
    resolve_token(None)  # before anything is written or sent
    if not is_adapter_folder(folder):
        return push_to_hub(folder, repo_id)
    recorded, local_base = recorded_base(folder)
    base_id = recorded
    if local_base:
        base_id = f"{repo_id}-base"
        write_base_card(Path(local_base), base_id, repo_id)
        push_to_hub(local_base, base_id, commit_message=f"Base model of {repo_id}")
    return push_to_hub(folder, repo_id, base_model_id=base_id)


def write_base_card(base: Path, base_id: str, adapter_id: str) -> None:
    """The card of a LoRA run's base model (its starting weights), unless it has one."""
    from .configuration_gpt2scratch import GPT2ScratchConfig

    if not needs_card(base):
        return
    config = GPT2ScratchConfig.from_pretrained(base)
    classifier = "GPT2ScratchForSequenceClassification" in (config.architectures or [])
    source = (
        f"The starting weights of a `gpt2scratch finetune` LoRA run, pushed as the base of the adapter "
        f"[{adapter_id}](https://huggingface.co/{adapter_id}). This model itself was not fine-tuned: load "
        "the adapter for the fine-tuned model."
    )
    card = model_card(
        config,
        title=base_id.split("/")[-1],
        source=source,
        pipeline_tag="text-classification" if classifier else "text-generation",
    )
    (base / "README.md").write_text(card.replace(REPO_PLACEHOLDER, base_id), encoding="utf-8")
