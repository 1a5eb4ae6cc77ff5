"""Run every benchmark and write BENCHMARKS.md: python -m benchmarks.run

Each benchmark measures ratios against a baseline in the same run (candidates run in turns), because
absolute numbers on a shared machine drift from run to run.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import (
    bench_distribute,
    bench_frozen_phase,
    bench_input_pipeline,
    bench_serving,
    bench_speed,
    bench_transfer,
)

ROOT = Path(__file__).resolve().parents[1]


def _fmt(d: dict) -> str:
    return ", ".join(f"{k} {v:,.0f}" for k, v in d.items())


def _speed_section(speed: dict, pipe: dict) -> str:
    p1, p1h, p1a = speed["phase1_plain"], speed["phase1_heavier"], speed["phase1_augmented"]
    p2, big = speed["phase2"], speed["large_photos"]
    st = p2["step_seconds"]
    target = 0.8 * p1["epochs"]

    def row(r: dict, label: str) -> str:
        t = r["seconds"]
        return (f"| `{r['backbone']}` | {label} | {t['live']:.1f} | {t['cached']:.1f} | {t['warm']:.1f} | "
                f"**{r['speedup']:.2f}x** | {r['speedup_warm']:.1f}x |")

    return f"""## Speed: feature cache, phase 2 backward pass, decoding (issue 8)

**Phase 1 on cached features.** {p1['train_images']} training images (500x375 JPEGs) plus validation, at
224x224, batch 32. The timing covers all of phase 1, validation passes included. "Cold" builds the cache
inside the timing, at one decode and one backbone pass per image and view. "Warm" is a second run that
reuses the cache. MobileNetV2-1.0 runs with random weights here, since speed does not depend on the
weight values and the ImageNet download is not reachable from this machine.

| backbone | phase 1 | live images, s | cache cold, s | cache warm, s | cold speed-up | warm speed-up |
| --- | --- | ---: | ---: | ---: | ---: | ---: |
{row(p1, f"{p1['epochs']} epochs, no augmentation")}
{row(p1h, f"{p1h['epochs']} epochs, no augmentation")}
{row(p1a, f"{p1a['epochs']} epochs, augmentation, {p1a['views']} views")}

- Target for E >= 5 epochs: at least 0.8·E = {target:.1f}x, cache build included. This run measured
  {p1['speedup']:.2f}x (MobileNetV2-0.35) and {p1h['speedup']:.2f}x (MobileNetV2-1.0), so the target was
  {"met" if min(p1['speedup'], p1h['speedup']) >= target else "not met"} here. The ratio moves a lot between
  runs on this shared machine. Other runs of the same benchmark measured 2.1-4.4x for the 0.35 backbone
  and 3.0-4.3x for 1.0.
- Both paths decode every image once, so the ceiling is E·F/(F + D), for a forward pass F and a decode D.
  The 0.35 backbone is so light that decoding a 500x375 JPEG costs about half of its forward pass
  (1.3 s against 2.4 s for 1,275 images), so the ceiling sits well below E. On top come fixed
  costs: tracing the extractor, hashing files and weights, compiling the head. Heavier backbones
  and larger datasets move the ratio towards E.
- Head training is cheap once the features exist. Keras copied the metrics to the host after every
  step, because our pre-emption callback has a batch hook, and that cost 3x a feature step. The
  callback now declares that it does not read them.
- With augmentation, the cache costs one backbone pass per view instead of one per epoch, so the
  gain is about epochs/views.

**Phase 2 step time.** MobileNetV2-1.0 at {p2['image_size']}x{p2['image_size']}, batch {p2['batch']}, training
steps after warm-up ({p2['layers']} backbone layers).

| unfrozen | seconds per step |
| --- | ---: |
| top 20% ({p2['top20_layers']} layers), tf_transfer's step | {st['top20']:.3f} |
| top 20%, Keras' default `train_step` | {st['top20_keras_step']:.3f} |
| all layers | {st['all']:.3f} |

- **Top 20% / all: {p2['ratio_top20_vs_all']:.2f}x** (target <= 0.5x).
- tf_transfer's step watches only trainable variables, so no gradient op below the cut is ever
  built (a test checks the traced graph). Keras' default step records the frozen layers too and
  relies on graph pruning to drop them. Here that pruning already removes most of the cost:
  ours / default = {p2['ratio_ours_vs_keras_step']:.2f}x. The guarantee also holds in eager mode.
- Caching the activations at the cut point (when augmentation is off) would also save the frozen
  forward pass. That was not built: the cache would hold a feature map per image at the cut
  (e.g. 7x7x160 floats, 30 KB, for MobileNetV2's top blocks). It would also only apply without
  augmentation, which is not the default.

**Decoding.** Epoch 2+ of the input pipeline from the decode cache runs
**{pipe['cached_epoch_ratio']:.1f}x** faster than decoding again (input pipeline table above).
{big['images']} photo-like JPEGs of 3000x2000 ({big['mb_per_image']:.1f} MB each) resized to 224:
DCT-scaled decoding gives {big['images_per_s']['dct']:.0f} images/s against {big['images_per_s']['full']:.0f}
for a full decode and resize, **{big['speedup']:.2f}x**. Entropy decoding, which scaling cannot skip,
dominates on these noisy, high-quality files. The gain is larger on smoother photos.
"""


def main() -> None:
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        pipe = bench_input_pipeline.run(Path(tmp))
        frozen = bench_frozen_phase.run(Path(tmp))
        srv = bench_serving.run(Path(tmp))
        transfer = bench_transfer.run(Path(tmp))
        dist = bench_distribute.run(Path(tmp))
        speed = bench_speed.run(Path(tmp))
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU" if not tf.config.list_physical_devices(
        "GPU") else f"{platform.machine()}, {os.cpu_count()} cores, GPU"
    scan_cost = pipe["images_per_s"]["ours"] / pipe["images_per_s"]["scan"]
    speed_text = _speed_section(speed, pipe)
    es, mo, mw = dist["epoch_seconds"], dist["mirrored_overhead"], dist["multiworker_overhead"]
    b32 = srv["batch32_images_per_s"]
    if transfer:
        accuracy = f"""## Transfer on real photos (issues 2 and 4)

CIFAR-10 photos from `../shared/datasets/cifar10_small` ({transfer['train_images']} training images, 10% of
them held out for validation, {transfer['test_images']} test images; 32x32 upscaled to 96x96),
MobileNetV2-0.35 with the bundled ImageNet weights: phase 1 (5 epochs, frozen) then phase 2 (3 epochs,
top 30 layers), against `--baseline scratch` (same architecture, random initialisation, all layers
trained for the same 8 epochs).

| model | test accuracy | macro F1 |
| --- | ---: | ---: |
| transfer, after phase 1 (frozen backbone) | {transfer['phase1']:.3f} | |
| transfer, after phase 2 (fine-tuned) | {transfer['phase2']:.3f} | {transfer['phase2_macro_f1']:.3f} |
| from scratch, same epoch budget | {transfer['scratch']:.3f} | {transfer['scratch_macro_f1']:.3f} |

The transfer gain is {transfer['phase2'] - transfer['scratch']:+.3f} accuracy; fine-tuning adds
{transfer['phase2'] - transfer['phase1']:+.3f} over the frozen phase.
"""
    else:
        accuracy = "## Transfer on real photos\n\nSkipped: ../shared/datasets/cifar10_small is not present.\n"
    text = f"""# Benchmarks

Written by `python -m benchmarks.run` on {time.strftime('%Y-%m-%d')} ({machine}; TensorFlow {tf.__version__}).
Ratios compare candidates measured in turns in the same run (median of repeats); absolute images/s
move with the machine's load, the ratios much less.

## Input pipeline (issue 2; target >= 1.0x)

{pipe['images']} JPEGs of 500x375 (30-60 KB), decoded and resized to 224x224, batches of 32, one full
pass, no cache, no augmentation.

| candidate | images/s |
| --- | ---: |
| tf_transfer `data.pipeline` | {pipe['images_per_s']['ours']:,.0f} |
| `image_dataset_from_directory` | {pipe['images_per_s']['keras']:,.0f} |
| `image_dataset_from_directory` + `prefetch(AUTOTUNE)` | {pipe['images_per_s']['keras_prefetch']:,.0f} |
| tf_transfer, epoch 2+ from the in-memory cache | {pipe['images_per_s']['ours_cached']:,.0f} |
| the up-front unreadable-file check (`images.find_unreadable`) | {pipe['images_per_s']['scan']:,.0f} |

- **ours / image_dataset_from_directory: {pipe['ratio_vs_keras']:.2f}x**; against it with prefetch:
  {pipe['ratio_vs_keras_prefetch']:.2f}x. Both decode with the same TensorFlow kernels on 2 cores, so
  parity is what the first epoch can reach; the gain is in later epochs: cached epochs run
  {pipe['cached_epoch_ratio']:.1f}x faster than the first.
- The up-front file check (every file decoded once, JPEGs at 1/8 scale) costs
  {scan_cost:.2f}x the time of one uncached epoch, once per run: on these
  high-quality JPEGs entropy decoding dominates, so the 1/8-scale IDCT saves little.

## Frozen-phase training (issue 2; target >= 0.9x)

MobileNetV2-0.35 at 224x224, backbone frozen (phase 1), {frozen['images']} images, batch 32, epochs
after the first (caches warm, functions traced).

| input | images/s |
| --- | ---: |
| tf_transfer pipeline, no augmentation | {frozen['images_per_s']['pipeline_plain']:,.0f} |
| tf_transfer pipeline, default augmentation | {frozen['images_per_s']['pipeline_augmented']:,.0f} |
| in-memory NumPy tensors (`model.fit(x, y)`) | {frozen['images_per_s']['in_memory']:,.0f} |

- **pipeline / in-memory: {frozen['ratio_plain_vs_in_memory']:.2f}x** without augmentation (the cached
  pipeline hands over tensors faster than Keras slices NumPy arrays), **{frozen['ratio_augmented_vs_in_memory']:.2f}x**
  with the default augmentation, which is extra work the in-memory baseline does not do. On 2 cores
  augmentation competes with the model for the CPU; it is one combined warp per image (rotation,
  zoom and translation in a single projective transform), which measured 1.9x faster than the three
  Keras preprocessing layers it replaced (112 -> 216 images/s in the same set-up).

## Serving (issue 3; target: bytes signature overhead <= 1.25x at batch 32)

MobileNetV2-0.35 classifier at 224x224, exported by tf_transfer, called in-process, against the same
Keras model's `predict_on_batch` on already decoded and resized tensors; 500x375 JPEGs.

| measure | bytes signature | Keras on decoded tensors |
| --- | ---: | ---: |
| batch 32, images/s | {b32['bytes_signature']:,.0f} | {b32['keras_decoded']:,.0f} |
| one image, p50 ms | {srv['single_bytes']['p50_ms']:.1f} | {srv['single_keras']['p50_ms']:.1f} |
| one image, p99 ms | {srv['single_bytes']['p99_ms']:.1f} | {srv['single_keras']['p99_ms']:.1f} |

- **Batch-32 overhead of the bytes signature (decode, header checks, resize, in the graph):
  {srv['batch32_overhead']:.2f}x.** The decode loop runs its iterations in parallel
  (`map_fn(parallel_iterations=32)`); with the default sequential loop it measured 1.25x. For one
  image the signature is faster than Keras' `predict_on_batch`, whose Python overhead exceeds the
  cost of decoding one JPEG.
- **Local dev server** (`tf_transfer.serve`, REST on loopback, {srv['server']['clients']} concurrent clients,
  one image per request, base64 JSON): {srv['server']['requests_per_s']:,.0f} requests/s, p50
  {srv['server']['p50_ms']:.0f} ms, p99 {srv['server']['p99_ms']:.0f} ms; in-process calls take
  {srv['in_process_single_ms']:.1f} ms each, so the server delivers {srv['server_vs_in_process_rps']:.2f}x the
  request rate of one in-process caller (concurrency buys back the HTTP and JSON cost on 2 cores).

{accuracy}
## Distribution and checkpoints (issue 5)

MobileNetV2-0.35 at 96x96, every layer training, 134 training images, global batch 16, median epoch
time after the first epoch.

| set-up | seconds per epoch | ratio to one process |
| --- | ---: | ---: |
| one process, default strategy | {es['single']:.2f} | 1.00 |
| MirroredStrategy, 2 logical CPU devices (8 per replica) | {es['mirrored_2cpu']:.2f} | {mo:.2f} |
| MultiWorkerMirroredStrategy, 2 processes on loopback | {es['multiworker_2proc']:.2f} | {mw:.2f} |

- **Overhead on this machine: {mo:.2f}x (mirrored) and {mw:.2f}x
  (two workers).** Both set-ups split the same 2 cores that one process already uses fully, and add
  an all-reduce of every gradient per step; there is no extra compute to gain, so this is pure cost.
  On real hardware each replica brings its own GPU (or machine): the same all-reduce then buys a
  near-linear speed-up as long as a step's compute is much larger than its all-reduce, i.e. for
  backbones larger than this one and per-replica batches of 32 or more.
- **Checkpoint cost:** a BackupAndRestore save takes {dist['save_seconds']:.2f} s here, measured as the extra
  epoch time of a save after every one of {dist['steps_per_epoch']} steps; the default once-per-epoch save is
  {dist['save_fraction_of_epoch']:.0%} of this tiny epoch, and a negligible share of real epochs (minutes);
  `--save-every N` trades that cost against work lost on a kill.

{speed_text}"""
    (ROOT / "BENCHMARKS.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
