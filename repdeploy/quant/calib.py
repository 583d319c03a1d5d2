"""Calibration: run the float model over sample images and turn its activations into ranges.

`calibrate(qnet, batches)` drives the forward pass of a QuantPlainNet with its quantizers off,
checks the images (NCHW, finite, not flat), streams every observed activation into a calibrator
(`quant.calibrators`) from a worker thread (`BackgroundCollector`), loads the computed ranges
into the model and returns them as a `CalibrationCache` (`quant.calib_cache`, calib.json) with
the seconds each stage took.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

import torch

from ..errors import DataError, InputError
from ..models.plain import PlainNet
from ..progress import module_steps
from .calib_cache import CalibrationCache, TensorRange, weights_fingerprint
from .calibrators import DEFAULT_BINS, DEFAULT_PERCENTILE, Calibrator, make_calibrator

MODEL_INPUT = "stage0.conv.input"  # the quantizer that sees the image itself


class BackgroundCollector:
    """Feeds a calibrator from a worker thread, so histograms are built while the model runs on.

    The observer only queues a reference to the activation; the worker computes its extremes and
    histogram (torch releases the GIL inside its ops) while the main thread runs the next layers.
    On 2 cores that hid the histogram cost almost entirely (conv + histc in series 1.47 s,
    overlapped 0.82-0.86 s, conv alone 0.95-0.99 s). One worker keeps the order of the batches, so
    the result is the serial one exactly. At most `pending` activations wait at any time, and
    `drain` (called after every batch) empties the queue, so memory stays flat in the number of
    images and no activation outlives its batch, which the data loader may then reuse.
    """

    def __init__(self, calibrator: Calibrator, pending: int = 4) -> None:
        import queue
        import threading

        self.calibrator = calibrator
        self.busy_s = 0.0  # worker time spent collecting (overlapped with the forward pass)
        self.wait_s = 0.0  # main-thread time spent waiting for the worker
        self._error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=pending)
        self._threads = torch.get_num_threads()
        self._worker = threading.Thread(target=self._run, name="repdeploy-calibration", daemon=True)
        self._worker.start()

    def _run(self) -> None:
        # A new thread starts from the default intra-op thread count, not the one the caller set.
        torch.set_num_threads(self._threads)
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self._error is None:  # after a failure, only drain so that nobody blocks
                    t0 = time.perf_counter()
                    with torch.no_grad():
                        self.calibrator.collect(*item)
                    self.busy_s += time.perf_counter() - t0
            except BaseException as exc:  # re-raised in the main thread by `drain`
                self._error = exc
            finally:
                self._queue.task_done()

    def __call__(self, name: str, x: torch.Tensor) -> None:
        t0 = time.perf_counter()
        self._queue.put((name, x))
        self.wait_s += time.perf_counter() - t0

    def drain(self) -> None:
        """Wait until every queued activation is collected; raise what the worker raised."""
        t0 = time.perf_counter()
        self._queue.join()
        self.wait_s += time.perf_counter() - t0
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join()


@torch.no_grad()
def calibrate(qnet, batches: Iterable[torch.Tensor] | None = None, *, forward_loop: Callable | None = None,
              method: str = "entropy", percentile: float = DEFAULT_PERCENTILE, bins: int = DEFAULT_BINS,
              total_batches: int | None = None, data: dict | None = None,
              keep_inputs: list[torch.Tensor] | None = None, keep_limit: int = 0) -> CalibrationCache:
    """Run float inference, compute activation ranges, load them into `qnet`; return the cache.

    `qnet` is a QuantPlainNet; every activation quantizer (for both targets) is calibrated, so
    the cache serves either export flavour. The images come from `batches` (NCHW tensors) or
    from `forward_loop(qnet)`, a callable that runs the model over the user's data itself, as
    ModelOpt's `forward_loop` does. With `keep_inputs`, the first `keep_limit` images seen are
    appended to it (the caller verifies the INT8 model on them). Activations are collected in a
    worker thread while the forward pass goes on (`BackgroundCollector`); `cache.timings` records
    the seconds spent reading data, in the forward pass, waiting for collection, collecting
    (overlapped) and in the threshold search (with `forward_loop`, data reading counts as forward).

    >>> cache = calibrate(qnet, forward_loop=lambda m: [m(x) for x, _ in loader])  # doctest: +SKIP
    """
    from ..devices import to_device
    from ..devices import module_device

    if (batches is None) == (forward_loop is None):
        raise InputError("calibrate needs exactly one of `batches` or `forward_loop`")
    calibrator = make_calibrator(method, percentile=percentile, bins=bins)
    qnet.eval()
    device = module_device(qnet)  # calibration runs where the model is; ranges leave as floats
    was_enabled = [(q, q.enabled) for q in qnet.quantizers()]
    qnet.disable()
    collector = BackgroundCollector(calibrator)
    qnet.observe(collector)
    seen = {"images": 0, "kept": 0, "lo": None, "hi": None}  # per-channel extremes: flat images calibrate nothing

    # The checks run as hooks on the model, so a user's forward_loop gets them as batches do.
    def check_input(module, args) -> None:
        x = args[0]
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise DataError(f"calibration input must be an NCHW float tensor, got "
                            f"{type(x).__name__} {tuple(getattr(x, 'shape', ()))}")
        if not torch.isfinite(x).all():
            raise DataError("calibration data holds NaN or Inf values; clean the images or arrays")
        b_lo, b_hi = x.amin(dim=(0, 2, 3)), x.amax(dim=(0, 2, 3))
        seen["lo"] = b_lo if seen["lo"] is None else torch.minimum(seen["lo"], b_lo)
        seen["hi"] = b_hi if seen["hi"] is None else torch.maximum(seen["hi"], b_hi)
        seen["images"] += int(x.shape[0])
        if keep_inputs is not None and seen["kept"] < keep_limit:
            part = x[: keep_limit - seen["kept"]].detach().to("cpu", copy=True)  # verified on the CPU
            keep_inputs.append(part)
            seen["kept"] += int(part.shape[0])

    def drain(module, args, output) -> None:
        collector.drain()  # no activation outlives its batch (the data loader may reuse it)

    hooks = [qnet.register_forward_pre_hook(check_input), qnet.register_forward_hook(drain)]
    data_s = loop_s = 0.0
    try:
        if forward_loop is not None:
            t0 = time.perf_counter()
            forward_loop(qnet)
            loop_s = time.perf_counter() - t0
        else:
            started = time.perf_counter()
            # per layer of each batch: one batch of a big model at 224 px runs for seconds
            with module_steps(list(qnet.layers().values()), f"calibrating ({method})", total_batches):
                for x in batches:
                    t0 = time.perf_counter()
                    data_s += t0 - started  # reading and preprocessing the batch (the iterator's work)
                    qnet(to_device(x, device))
                    started = time.perf_counter()
                    loop_s += started - t0
    finally:
        for hook in hooks:
            hook.remove()
        qnet.observe(None)
        collector.close()
        for q, on in was_enabled:
            q.enabled = on
    lo, hi = seen["lo"], seen["hi"]
    if seen["images"] == 0:
        raise DataError("no calibration images were read; give calibration data with at least one image"
                        + (" (forward_loop never called the model)" if forward_loop is not None else ""))
    if bool((hi == lo).all()):
        raise DataError(
            "calibration images are all identical and flat (e.g. all zero): they have no range to "
            "calibrate; use real images"
        )
    images = seen["images"]
    qnet.set_weight_ranges()  # the weights' own ranges (after the data checks, which name a NaN's tensor)
    unsigned = {q.name: 255 if q.unsigned else 127 for q in qnet.quantizers() if not q.per_channel}
    unsigned.setdefault("features", 255)
    t0 = time.perf_counter()
    amax = calibrator.compute(unsigned)
    search_s = time.perf_counter() - t0
    # The model input is the preprocessed image, whose range preprocessing already bounds;
    # clipping it throws away pixels. Histogram methods do clip it on images with a dominant
    # background value (entropy cut the built-in digits at the background level and lost 15
    # top-1 points on the zoo), so the input always keeps its observed range.
    amax[MODEL_INPUT] = calibrator.absmax(MODEL_INPUT)
    tensors = {n: TensorRange(amax[n], calibrator.minimum[n], calibrator.maximum[n]) for n in amax}
    cache = CalibrationCache(
        arch=qnet.spec.to_dict(), weights_sha256=weights_fingerprint(_plain_of(qnet)), method=method,
        samples=images, tensors=tensors, percentile=percentile if method == "percentile" else None,
        bins=bins if method != "max" else None, target=qnet.target, data=data or {},
        timings={"data_s": data_s, "forward_s": loop_s - collector.wait_s, "collect_wait_s": collector.wait_s,
                 "collect_overlapped_s": collector.busy_s, "search_s": search_s},
    )
    qnet.load_ranges(cache.amax)
    return cache


def _plain_of(qnet) -> PlainNet:
    # The fingerprint must be of the float weights the user handed in, which the wrappers hold.
    return qnet.float_model()
