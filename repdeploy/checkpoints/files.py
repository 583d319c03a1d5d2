"""Reading checkpoint files safely, and finding the weights inside them.

Checkpoints are untrusted pickles, so they are opened with `weights_only=True`; a file that
needs more is refused unless the user opts in with `--trust-checkpoint`. Zip CRCs are checked
before `torch.load` (which does not check them), safetensors files are read without pickle, and
`unwrap` finds the state_dict in a training container (`model`, `state_dict`, `ema`, ...) and
strips the DDP / torch.compile prefixes.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import CheckpointError, UnsafeCheckpointError

SUPPORTED = "official RepVGG (train/deploy), timm RepVGG, RepOpt-VGG (target/hs/scales) or a repdeploy fused file"
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")


def read_file(path: str | Path, *, trust_checkpoint: bool = False) -> Any:
    """Deserialize a .pth/.pt/.pth.tar/.safetensors file, refusing anything unsafe or broken."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist; check the path")
    if p.is_dir():
        raise CheckpointError(f"checkpoint {p} is a directory; give the checkpoint file inside it")
    size = p.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint {p} is empty (0 bytes); re-download or re-save it")
    with open(p, "rb") as f:
        head = f.read(16)
    verify_sidecar_digest(p)
    if _looks_like_safetensors(head, size):
        return _read_safetensors(p)
    if not (head.startswith(b"PK") or head[:1] == b"\x80"):
        raise CheckpointError(
            f"checkpoint {p} is not a PyTorch or safetensors file (unknown leading bytes); "
            "give a .pth/.pt/.pth.tar/.safetensors checkpoint"
        )
    if head.startswith(b"PK"):
        verify_zip(p)
    try:
        return torch.load(p, map_location="cpu", weights_only=not trust_checkpoint)
    except pickle.UnpicklingError as exc:
        what = _unsafe_global(str(exc))
        # Only a pickle that names a class or function is unsafe; any other refusal of the
        # weights-only unpickler (an unknown opcode, a bad frame) means damaged bytes, and
        # --trust-checkpoint would not repair those, only run whatever they happen to encode.
        if what and ("weights_only" in str(exc) or "Weights only load failed" in str(exc)):
            raise UnsafeCheckpointError(
                f"checkpoint {p} needs arbitrary unpickling{what}, which can run code from the file; "
                "if you trust its source, pass --trust-checkpoint"
            ) from exc
        raise CheckpointError(f"checkpoint {p} is damaged: its pickle data is invalid ({_unpickler_reason(exc)}); "
                              "re-download or re-save it (--trust-checkpoint would not repair it)") from exc
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"checkpoint {p} is truncated or corrupt ({_first_line(exc)}); re-download it") from exc


def sidecar_digest(p: Path) -> Path | None:
    """`<file>.sha256` beside a checkpoint (the `sha256sum` format model releases ship), if any."""
    side = p.with_name(p.name + ".sha256")
    return side if side.is_file() else None


def verify_sidecar_digest(p: Path) -> None:
    """Check a checkpoint against its `.sha256` file, when one is there.

    Zip checkpoints carry CRCs (verify_zip); safetensors and legacy (non-zip) torch files carry no
    checksum at all, so a flipped bit in a weight would load as a slightly different weight. A
    digest beside the file is the one check that catches it; without one, those formats are read
    as they are (docs/formats.md says so).
    """
    side = sidecar_digest(p)
    if side is None:
        return
    from ..io import sha256_file

    try:
        text = side.read_text(errors="replace")[:4096]
    except OSError as exc:
        raise CheckpointError(f"digest file {side} cannot be read ({exc.strerror or exc})") from exc
    m = re.match(r"\s*([0-9a-fA-F]{64})\b", text)
    if m is None:
        raise CheckpointError(f"digest file {side} holds no sha256 (64 hex digits, as `sha256sum` writes); fix or "
                              "remove it")
    if sha256_file(p).lower() != m.group(1).lower():
        raise CheckpointError(f"checkpoint {p} does not match its digest {side.name} (sha256 differs: the bytes "
                              "changed after it was published); re-download it")


def load_error_reason(exc: BaseException) -> str:
    """Why a weights-only torch.load refused a file, in repdeploy's words.

    torch's own message advises loading without the weights-only restriction ("will likely
    succeed"): advice to run code from an untrusted file is never passed on.
    """
    text = str(exc)
    what = _unsafe_global(text)
    if isinstance(exc, pickle.UnpicklingError) and what:
        return f"it needs arbitrary unpickling{what}, which repdeploy refuses for this file"
    if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in text:
        return f"its pickle data is invalid ({_unpickler_reason(exc)})"
    return _first_line(exc)


def verify_zip(p: Path) -> None:
    """Check every member's CRC-32: torch.load does not, and reads damaged tensor bytes as weights."""
    try:
        with zipfile.ZipFile(p) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise CheckpointError(f"checkpoint {p} is truncated or corrupt (broken zip archive: {_first_line(exc)}); "
                              "re-download or re-save it") from exc
    except Exception as exc:  # noqa: BLE001 - zlib errors on a damaged deflate stream
        raise CheckpointError(f"checkpoint {p} is corrupt ({type(exc).__name__}: {_first_line(exc)}); "
                              "re-download or re-save it") from exc
    if bad is not None:
        raise CheckpointError(f"checkpoint {p} is corrupt: member {bad} fails its CRC check (the bytes changed "
                              "after it was saved); re-download or re-save it")


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    header_len = int.from_bytes(head[:8], "little")
    return 0 < header_len < size and head[8:9] == b"{"


def _read_safetensors(p: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(p), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {p} is a truncated or corrupt safetensors file ({exc}); re-download it") from exc


def _unsafe_global(message: str) -> str:
    m = re.search(r"GLOBAL ([\w.]+)", message) or re.search(r"Unsupported global: GLOBAL ([\w.]+)", message)
    return f" (it holds a pickled {m.group(1)})" if m else ""


def _unpickler_reason(exc: BaseException) -> str:
    # torch prefixes the real reason with paragraphs about the weights_only default.
    m = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(exc))
    return m.group(1).strip()[:160] if m else _first_line(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__


def is_state_dict(obj: Any) -> bool:
    """A non-empty mapping of names to tensors."""
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def unwrap(obj: Any, *, use_ema: bool = False, path: Path | str = "checkpoint") -> tuple[dict, str]:
    """Find the state_dict inside a training checkpoint: plain, `model`, `state_dict`, `ema`, ...

    Returns the state_dict with wrapper prefixes (`module.` from DDP, `_orig_mod.` from
    torch.compile) removed, and a description of where it was found.
    """
    if isinstance(obj, nn.Module):  # only reachable with --trust-checkpoint (a pickled module)
        return _strip_prefixes(obj.state_dict()), "pickled module"
    if is_state_dict(obj):
        if use_ema:
            raise CheckpointError(f"{path} holds a single state_dict, no EMA weights; drop --ema")
        return _strip_prefixes(dict(obj)), "state_dict"
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, not a state_dict; expected {SUPPORTED}"
        )
    order = ("ema", "model_ema", "state_dict_ema") if use_ema else ("model", "state_dict", "model_state_dict", "net")
    for key in order:
        if key in obj:
            inner = obj[key]
            if isinstance(inner, Mapping) and not is_state_dict(inner):
                for sub in ("module", "state_dict", "model"):
                    if sub in inner and is_state_dict(inner[sub]):
                        inner = inner[sub]
                        break
            if is_state_dict(inner) or isinstance(inner, nn.Module):
                sd, _ = unwrap(inner, path=path)
                return sd, key
    if use_ema:
        raise CheckpointError(f"{path} has no EMA weights (no 'ema' entry); drop --ema")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if tensors and len(tensors) >= len(obj) / 2:
        return _strip_prefixes(tensors), "state_dict"
    keys = ", ".join(map(str, list(obj)[:6]))
    raise CheckpointError(f"{path} has no weights in any known entry (top-level keys: {keys}); expected {SUPPORTED}")


def _strip_prefixes(sd: dict) -> dict:
    for prefix in _WRAPPER_PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd
