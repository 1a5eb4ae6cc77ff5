"""BENCHMARKS.md and the README's measured figures, written from benchmarks/results/*.json.

Nothing here states a number of its own: every figure is read from a result file, and every section
says which commit and date it was measured on.
"""

from __future__ import annotations

import statistics

from benchmarks.common import spread


def _r(s: dict, digits: int = 2, unit: str = "x") -> str:
    """A min/median/max spread as 'median (min-max over n)'."""
    f = f"{{:.{digits}f}}"
    return f"{f.format(s['median'])}{unit} ({f.format(s['min'])}-{f.format(s['max'])} over {s['n']} repeats)"


def _verdict(s: dict, target: float, at_least: bool = True) -> str:
    """'met' or '**missed**' for a spread's median against a target (at least, or at most, the target)."""
    ok = s["median"] >= target if at_least else s["median"] <= target
    return f"target {'at least' if at_least else 'at most'} {target:g}x: {'met' if ok else '**missed**'} by the median"


def _stamp(record: dict) -> str:
    minutes = f"; {record['minutes']} min" if record.get("minutes") else ""
    note = f" {record['note']}" if record.get("note") else ""
    return (f"*Measured on {record['date']} at commit `{record['commit']}` ({record['machine']}; TensorFlow "
            f"{record['tensorflow']}{minutes}).{note}*")


def input_pipeline(r: dict) -> str:
    ips = r["images_per_s"]
    return f"""## Input pipeline (target: at least as fast as `image_dataset_from_directory`)

{r['images']} JPEGs of 500x375 (30-60 KB), decoded and resized to 224x224, batches of 32, one full pass,
no cache, no augmentation.

| candidate | images/s (median) |
| --- | ---: |
| tf_transfer `datasets.pipeline` | {ips['ours']:,.0f} |
| `image_dataset_from_directory` | {ips['keras']:,.0f} |
| `image_dataset_from_directory` + `prefetch(AUTOTUNE)` | {ips['keras_prefetch']:,.0f} |
| tf_transfer, epoch 2+ from the in-memory cache | {ips['ours_cached']:,.0f} |
| the up-front file check (`images.find_unreadable`) | {ips['scan']:,.0f} |

- Speed against `image_dataset_from_directory`: **{_r(r['ratio_vs_keras_spread'])}**
  ({_verdict(r['ratio_vs_keras_spread'], 1.0)}).
- A cached epoch against the first one: {_r(r['cached_epoch_ratio_spread'], 1)}.
- The file check costs {_r(r['scan_cost_spread'])} the time of one uncached epoch, once per run.
"""


def frozen_phase(r: dict) -> str:
    ips = r["images_per_s"]
    return f"""## Frozen-phase training (target: at least 0.9x in-memory tensors)

MobileNetV2-0.35 at 224x224, backbone frozen, {r['images']} images, batch 32, epochs after the first
(caches warm, functions traced), on live images (no feature cache).

| input | images/s (median) |
| --- | ---: |
| tf_transfer pipeline, no augmentation | {ips['pipeline_plain']:,.0f} |
| tf_transfer pipeline, default augmentation | {ips['pipeline_augmented']:,.0f} |
| in-memory NumPy tensors (`model.fit(x, y)`) | {ips['in_memory']:,.0f} |

- Pipeline against in-memory tensors: **{_r(r['ratio_plain_spread'])}** without augmentation
  ({_verdict(r['ratio_plain_spread'], 0.9)}),
  **{_r(r['ratio_augmented_spread'])}** with the default augmentation (work the in-memory baseline does
  not do).
"""


def serving(r: dict) -> str:
    b32, srv = r["batch32_images_per_s"], r["server"]
    return f"""## Serving (target: the bytes signature's overhead at batch 32 at most 1.25x)

MobileNetV2-0.35 classifier at 224x224, exported by tf_transfer and called in-process, against the
same Keras model's `predict_on_batch` on already decoded and resized tensors; 500x375 JPEGs.

| measure | bytes signature | Keras on decoded tensors |
| --- | ---: | ---: |
| batch 32, images/s | {b32['bytes_signature']:,.0f} | {b32['keras_decoded']:,.0f} |
| one image, p50 ms | {r['single_bytes']['p50_ms']:.1f} | {r['single_keras']['p50_ms']:.1f} |
| one image, p99 ms | {r['single_bytes']['p99_ms']:.1f} | {r['single_keras']['p99_ms']:.1f} |

- Batch-32 time of the bytes signature (decode, header checks, resize, in the graph) against Keras on
  decoded tensors: **{_r(r['batch32_overhead_spread'])}** ({_verdict(r['batch32_overhead_spread'], 1.25, False)}).
- Local server (REST on loopback, {srv['clients']} concurrent clients, one image per request, base64
  JSON): {srv['requests_per_s']:,.0f} requests/s, p50 {srv['p50_ms']:.0f} ms, p99 {srv['p99_ms']:.0f} ms; an
  in-process call takes {r['in_process_single_ms']:.1f} ms, so the server delivers
  {r['server_vs_in_process_rps']:.2f}x the request rate of one in-process caller.
"""


def transfer(r: dict) -> str:
    if not r:
        return "## Transfer on real photos\n\nSkipped: ../shared/datasets/cifar10_small is not present.\n"
    return f"""## Transfer on real photos

CIFAR-10 photos from `../shared/datasets/cifar10_small` ({r['train_images']} training images, 10% of them held
out for validation, {r['test_images']} test images; 32x32 upscaled to 96x96), MobileNetV2-0.35 with the bundled
ImageNet weights: phase 1 (5 epochs) then phase 2 (3 epochs, top 30 layers), against `--baseline scratch`
(the same architecture from random initialisation, all layers trained for the same 8 epochs).

| model | test accuracy | macro F1 |
| --- | ---: | ---: |
| transfer, after phase 1 (frozen backbone) | {r['phase1']:.3f} | |
| transfer, after phase 2 (fine-tuned) | {r['phase2']:.3f} | {r['phase2_macro_f1']:.3f} |
| from scratch, same epoch budget | {r['scratch']:.3f} | {r['scratch_macro_f1']:.3f} |

Transfer against scratch: {r['phase2'] - r['scratch']:+.3f} accuracy; fine-tuning against the frozen phase:
{r['phase2'] - r['phase1']:+.3f}.
"""


def pretrain(r: dict) -> str:
    if not r:
        return "## Pre-training your own backbone\n\nSkipped: ../shared/datasets/cifar10_small is not present.\n"
    seeds = sorted(r["by_seed"])
    starts = list(r["by_seed"][seeds[0]])

    def cell(start: str, key: str) -> str:
        values = [r["by_seed"][s][start][key] for s in seeds]
        spread = f" ({min(values):.3f}-{max(values):.3f})" if len(values) > 1 else ""
        return f"{sum(values) / len(values):.3f}{spread}"

    rows = "\n".join(f"| {s} | {cell(s, 'test_accuracy')} | {cell(s, 'test_macro_f1')} |" for s in starts)
    acc = {s: sum(r["by_seed"][k][s]["test_accuracy"] for k in seeds) / len(seeds) for s in starts}
    rand, imnet = acc["random initialisation"], acc["ImageNet weights"]
    sup, rot = acc["published, supervised on vehicles"], acc["published, rotation prediction (no labels)"]
    p = r["pretrained"]
    return f"""## Pre-training your own backbone (target: better than random initialisation)

`benchmarks/bench_pretrain.py`: MobileNetV2-0.35 at {r['size']}x{r['size']} (CIFAR-10's 32x32 upscaled), pre-trained
from random initialisation for {r['pretrain_epochs']} epochs with `tf_transfer.pretrain`, then published: **supervised**
on the four vehicle classes ({p['supervised']['images']} labelled images; source accuracy
{p['supervised']['source_test_accuracy']:.3f}) and by **rotation prediction** on all {p['rotation']['images']}
training images without their labels (4 turns each; source accuracy {p['rotation']['source_test_accuracy']:.3f}).
Target: the six animal classes with {r['per_class']} labelled images each, tested on their {r['test_images']} test
images; phase 1 {r['target_epochs'][0]} + phase 2 {r['target_epochs'][1]} epochs for every start (random initialisation
trains every layer for all {sum(r['target_epochs'])}). Means over {len(seeds)} seeds of the labelled subset (min-max).

| start | test accuracy | test macro F1 |
| --- | ---: | ---: |
{rows}

- Published supervised backbone against random initialisation: {sup - rand:+.3f} accuracy
  ({'met' if sup > rand else '**missed**'}); rotation prediction (no labels) against random initialisation:
  {rot - rand:+.3f} ({'met' if rot > rand else '**missed**'}).
- The ImageNet weights (1.28M labelled photos) against the best published backbone: {imnet - max(sup, rot):+.3f}.
- Chance is {1 / len(r['classes']):.3f}; a start at or near it predicts mostly one class. With {r['per_class']} labels
  per class, a backbone pre-trained from scratch on a few thousand 32x32 images learns little that
  transfers; read the gains against random initialisation as small, not as a substitute for ImageNet.
"""


def multitask(r: dict) -> str:
    if not r:
        return "## Several heads on one backbone\n\nSkipped: ../shared/datasets/cifar10_small is not present.\n"
    seeds = sorted(r["by_seed"])

    def values(model: str, task: str, key: str) -> list[float]:
        return [r["by_seed"][s][model]["tasks"][task][key] for s in seeds]

    def cell(model: str, task: str, key: str) -> str:
        v = values(model, task, key)
        return f"{sum(v) / len(v):.3f}" + (f" ({min(v):.3f}-{max(v):.3f})" if len(v) > 1 else "")

    rows = []
    for task, keys in (("cls", ("accuracy", "macro_f1")), ("group", ("accuracy", "macro_f1")),
                       ("attributes", ("micro_f1", "mean_average_precision"))):
        for key in keys:
            rows.append(f"| {task} | {key.replace('_', ' ')} | {cell('joint', task, key)} | "
                        f"{cell('separate', task, key)} |")
    seconds = {m: [r["by_seed"][s][m]["seconds"] for s in seeds] for m in ("joint", "separate")}
    train_ratio = _r(spread([a / b for a, b in zip(seconds["separate"], seconds["joint"], strict=True)]), 2, "x")
    mean_seconds = {m: sum(v) / len(v) for m, v in seconds.items()}
    serving = r["serving"]
    serve = {k: _r(v, 3, " s") for k, v in serving["seconds"].items()}
    deltas = {task: sum(values("joint", task, k)) / len(seeds) - sum(values("separate", task, k)) / len(seeds)
              for task, k in (("cls", "accuracy"), ("group", "accuracy"), ("attributes", "micro_f1"))}
    attrs = ", ".join(f"{c}: {a.replace('|', ' + ')}" for c, a in r["attributes"].items())
    return f"""## Several heads on one backbone: one joint model against one model per task

`benchmarks/bench_multitask.py`: CIFAR-10 photos from `../shared/datasets/cifar10_small`
({r['train_images']} training images, 10% held out for validation, {r['test_images']} test images; 32x32 upscaled
to {r['size']}x{r['size']}), MobileNetV2-0.35 with the bundled ImageNet weights, phase 1 {r['epochs'][0]} + phase 2
{r['epochs'][1]} epochs. Three tasks from one manifest: `cls` (the ten classes), `group` (animal or vehicle) and
`attributes` (multi-label: {attrs}).
**Joint**: one backbone with three heads; **separate**: one model per task, same recipe, split and epochs. Means over
{len(seeds)} seeds (min-max); multi-label metrics at the per-label thresholds chosen on the validation split.

| task | metric | joint (one model) | separate (three models) |
| --- | --- | ---: | ---: |
{chr(10).join(rows)}

- Training time (whole runs, with export): joint {mean_seconds['joint']:.0f} s against
  {mean_seconds['separate']:.0f} s for the three models (separate / joint: {train_ratio}).
- Serving a batch of {serving['batch']} JPEGs through `serving_default`: joint {serve['joint']}, the three exports
  in turn {serve['separate']} (separate / joint: {_r(serving['separate_over_joint'], 2, 'x')}).
- Joint minus separate (means over the seeds): cls {deltas['cls']:+.3f} accuracy, group {deltas['group']:+.3f}
  accuracy, attributes {deltas['attributes']:+.3f} micro F1. Differences of about a point are within the spread
  between seeds here; the joint model costs one backbone's training and one backbone pass per request.
"""


def text(r: dict) -> str:
    if not r:
        return "## Text classification\n\nSkipped: ../shared's emotion set or MiniLM checkpoint is not present.\n"
    rows = []
    for key, label in (("tfidf_logreg", "TF-IDF (1-2 grams) + logistic regression"),
                       ("frozen_minilm", "MiniLM frozen + head (phase 1 on cached embeddings)"),
                       ("finetuned_minilm", "MiniLM fine-tuned (tf_transfer's text defaults)"),
                       ("random_init", "same architecture, random initialisation")):
        m = r[key]
        seconds = m.get("epoch_seconds", {})
        per_epoch = " / ".join(f"{seconds[p]:.1f} s" if p in seconds else "-" for p in ("1", "2"))
        rows.append(f"| {label} | {m['test_accuracy']:.3f} | {m['test_macro_f1']:.3f} | {m['seconds'] / 60:.1f} min "
                    f"| {per_epoch if seconds else '-'} |")
    ft, tfidf, frozen = r["finetuned_minilm"], r["tfidf_logreg"], r["frozen_minilm"]
    rec, srv = r["recipe"], r["serving"]
    goal = "met" if ft["test_accuracy"] >= 0.92 else "**missed**"
    frozen_note = ("Frozen sentence embeddings lose to TF-IDF on this set: the gain comes from fine-tuning."
                   if frozen["test_accuracy"] < tfidf["test_accuracy"] else
                   "Frozen sentence embeddings already beat TF-IDF on this set.")
    return f"""## Text classification: MiniLM on real tweets (target: at least 0.92 test accuracy with the defaults)

`benchmarks/bench_text.py`: `../shared/datasets/emotion` (English tweets, six emotions; {r['data']['train']:,}
train / {r['data']['val']:,} validation / {r['data']['test']:,} test, the given splits), the real all-MiniLM-L6-v2
checkpoint (`--backbone hf:...`, 22.7M parameters, mean pooling, up to {rec['max_seq_length']} tokens). Text
defaults: phase 1 {rec['phase1_epochs']} epochs on cached embeddings, then every layer ({rec['unfreeze']}) for
{rec['phase2_epochs']} epochs at {rec['learning_rate']:g} with AdamW (weight decay {rec['weight_decay']:g}),
{rec['warmup']:g} warm-up and cosine decay, batch {rec['batch_size']}; random initialisation trains the same way at
{rec['random_init_learning_rate']:g}. One run each, in one process, on 2 cores; the TF-IDF baseline is trained in
the same run.

| model | test accuracy | test macro F1 | wall time | seconds per epoch (phase 1 / phase 2) |
| --- | ---: | ---: | ---: | ---: |
{chr(10).join(rows)}

- Fine-tuned MiniLM: {ft['test_accuracy']:.3f} test accuracy against the 0.92 goal: {goal}. Against TF-IDF +
  logistic regression: {ft['test_accuracy'] - tfidf['test_accuracy']:+.3f}; against the frozen encoder:
  {ft['test_accuracy'] - frozen['test_accuracy']:+.3f}; against the same architecture from random initialisation
  (same recipe and epochs): {ft['test_accuracy'] - r['random_init']['test_accuracy']:+.3f}. {frozen_note}
- The first useful model (frozen encoder + head, the embeddings computed once) took {frozen['seconds'] / 60:.1f} min.
- Serving the exported string signature (`serving_default`, `text` in; tokenisation inside), batches of {srv['batch']}
  tweets: in process {_r(srv['in_process_texts_per_s'], 0, ' texts/s')}; through the local REST server
  {_r(srv['rest_texts_per_s'], 0, ' texts/s')}.
- Not measured here: the "+8 points over TF-IDF on a held-out sentiment set" goal (no such set is on this machine).
"""


def distribute(r: dict) -> str:
    es, mo, mw = r["epoch_seconds"], r["mirrored_overhead"], r["multiworker_overhead"]
    return f"""## Distribution and checkpoints

MobileNetV2-0.35 at 96x96, every layer training, {r['train_images']} training images, global batch 16,
median epoch time after the first epoch.

| set-up | seconds per epoch | ratio to one process |
| --- | ---: | ---: |
| one process, default strategy | {es['single']:.2f} | 1.00 |
| MirroredStrategy, 2 logical CPU devices (8 per replica) | {es['mirrored_2cpu']:.2f} | {mo:.2f} |
| MultiWorkerMirroredStrategy, 2 processes on loopback | {es['multiworker_2proc']:.2f} | {mw:.2f} |

- Both set-ups split the same 2 cores that one process already uses fully, and add an all-reduce of
  every gradient per step, so on this machine they are pure cost; on real hardware each replica brings
  its own device.
- A BackupAndRestore save costs {r['save_seconds']:.2f} s here (the extra epoch time of a save after every one
  of {r['steps_per_epoch']} steps): {r['save_fraction_of_epoch']:.0%} of this tiny epoch at the default
  once-per-epoch save.
"""


def speed(r: dict) -> str:
    p2, big = r["phase2"], r["large_photos"]

    def row(x: dict, label: str) -> str:
        t = x["seconds"]
        return (f"| `{x['backbone']}` | {label} | {t['live']:.1f} | {t['cached']:.1f} | {t['warm']:.1f} | "
                f"**{_r(x['speedup_spread'])}** | {_r(x['speedup_warm_spread'], 1)} |")

    a, b, c = r["phase1_plain"], r["phase1_heavier"], r["phase1_augmented"]
    target = 0.8 * a["epochs"]
    met = "met" if min(a["speedup"], b["speedup"]) >= target else "not met"
    st = p2["step_seconds"]
    return f"""## Speed: feature cache, phase 2 backward pass, decoding

**Phase 1 on cached features.** {a['train_images']} training images (500x375 JPEGs) plus validation, at 224x224,
batch 32; all of phase 1 is timed, validation included. "Cold" builds the cache inside the timing; "warm"
reuses it. MobileNetV2-1.0 runs with random weights (speed does not depend on weight values).

| backbone | phase 1 | live, s | cold cache, s | warm cache, s | cold speed-up | warm speed-up |
| --- | --- | ---: | ---: | ---: | ---: | ---: |
{row(a, f"{a['epochs']} epochs, no augmentation")}
{row(b, f"{b['epochs']} epochs, no augmentation")}
{row(c, f"{c['epochs']} epochs, augmentation, {c['views']} views")}

- Target for E >= 5 epochs: at least 0.8·E = {target:.1f}x, cache build included: **{met}** in this run
  (medians {a['speedup']:.2f}x and {b['speedup']:.2f}x). Both paths decode every image once, so the ceiling is
  below E; heavier backbones and larger sets move the ratio towards it.

**Phase 2 step time.** MobileNetV2-1.0 at {p2['image_size']}x{p2['image_size']}, batch {p2['batch']}, training steps
after warm-up ({p2['layers']} backbone layers).

| unfrozen | seconds per step (median) |
| --- | ---: |
| top 20% ({p2['top20_layers']} layers), tf_transfer's step | {st['top20']:.3f} |
| top 20%, Keras' default `train_step` | {st['top20_keras_step']:.3f} |
| all layers | {st['all']:.3f} |

- Top 20% against all: **{_r(p2['ratio_top20_vs_all_spread'])}**
  ({_verdict(p2['ratio_top20_vs_all_spread'], 0.5, False)}).
- tf_transfer's step against Keras' default one: {_r(p2['ratio_ours_vs_keras_step_spread'])}. The step watches only
  trainable variables, so no gradient op below the cut is built (a test checks the traced graph);
  graph pruning removes most of that work from Keras' default step too, so this is a guarantee, not a
  speed-up.

**Decoding.** {big['images']} photo-like JPEGs of 3000x2000 ({big['mb_per_image']:.1f} MB each) resized to 224:
DCT-scaled decoding against a full decode and resize: **{_r(big['speedup_spread'])}**
({big['images_per_s']['dct']:.0f} against {big['images_per_s']['full']:.0f} images/s, medians).
"""


def _alive(hostile: dict) -> str:
    alive = hostile.get("server_process_alive_after_every_input")
    return "not measured" if alive is None else "alive" if alive else "NOT alive (a crash)"


def reliability(r: dict) -> str:
    load = r["load"]
    clean = statistics.median(x["requests_per_s"] for x in load["runs"]["clean"])
    stalled = statistics.median(x["requests_per_s"] for x in load["runs"]["stalled"])
    p99 = max(x["p99_ms"] for x in load["runs"]["stalled"])
    errors = sum(sum(x["errors"].values()) for x in load["runs"]["stalled"])
    rows = "\n".join(f"| {name} | {v['inputs']} | " + ", ".join(f"{k}: {n}" for k, n in v.items()
                                                              if k not in ("inputs", "slowest_s"))
                     + f" | {v['slowest_s']:.2f} |" for name, v in r["hostile_inputs"].items() if isinstance(v, dict))
    faults = "\n".join(f"| {f['moment']} | {'yes' if f['resumed_ok'] else 'NO'} | {f['epoch_records_rerun']} | "
                       f"{f['final_epochs']} | {', '.join(f['versions']) or '-'} |" for f in r["faults"])
    return f"""## Reliability: load held, bad inputs, kills survived

**Load with stalled connections.** The local server with {load['clients']} real clients (batches of {load['batch']}
images, {load['seconds']:.0f} s per measurement, {len(load['runs']['clean'])} repeats in turns) with and without
{load['stalled_connections']} connections that send half a header and wait: {clean:.0f} requests/s without and
{stalled:.0f} with them, **{_r(load['throughput_ratio'])}** of the clean rate; p99 latency at most {p99:.0f} ms;
{errors} failed requests; {load['extra_threads_while_stalled']} extra threads in the server process while they
were open.

**Hostile inputs** (mutated JPEG/PNG/BMP/WebP/GIF files, decompression bombs, malformed JSON and base64, tensor
shapes up to 10^6 per dimension with one value to repeat; JSON and tensors of rank 0-64 with mixed value types
and dtypes, sent to a server in its own process):

| target | inputs | answers | slowest, s |
| --- | ---: | --- | ---: |
{rows}

No hang and no 5xx; peak memory of the process grew by {r['hostile_inputs']['peak_rss_growth_mb']:.0f} MB
over the first three; the server process of the last two was {_alive(r['hostile_inputs'])} after every input.
The unit tests run the same kinds of inputs in `tests/test_fuzz.py`.

**Kills survived.** A small run (10 epochs, 32x32) killed with SIGKILL at a moment, then `--resume`:

| killed | resumed and finished | epoch records run again | epochs in the end | exported versions |
| --- | --- | ---: | ---: | --- |
{faults}

An epoch killed before its backup was written runs again (backups are per epoch; `--save-every N` saves
every N steps); a finished stage never runs again, and a kill during the export leaves one version.
"""


def keras3(r: dict) -> str:
    v, hub, fit = r["versions"], r["hub_keras_layer"], r["multiworker_fit"]
    return f"""## Keras stack: what Keras 3 does with what tf_transfer needs

`benchmarks/check_keras3.py` runs each check in a fresh process on the installed versions (TensorFlow
{v['tensorflow']}, Keras {v['keras']}, tf_keras {v['tf_keras']}, TF-Hub {v['tensorflow_hub']}) and records its
last line:

| check | Keras 3 | tf_keras |
| --- | --- | --- |
| a `hub.KerasLayer` in a model | `{hub['keras']}` | `{hub['tf_keras']}` |
| `model.fit` under MultiWorkerMirroredStrategy, 2 workers | `{fit['keras'][:120]}` | `{fit['tf_keras']}` |
"""


def finetune(r: dict) -> str:
    if not r or not r.get("results"):
        return "## Fine-tuning recipes\n\nNot measured: ../shared/datasets/clothing10 is not present.\n"
    by: dict[str, list[dict]] = {}
    for x in r["results"]:
        by.setdefault(x["config"], []).append(x)

    def cell(runs: list[dict], key: str, digits: int = 3) -> str:
        values = [x[key] for x in runs if key in x]
        if not values:
            return "error"
        return f"{statistics.mean(values):.{digits}f}" + (f" ({min(values):.{digits}f}-{max(values):.{digits}f})"
                                                           if len(values) > 1 else "")

    rows = "\n".join(
        f"| {name} | {len(runs)} | {cell(runs, 'val_accuracy')} | {cell(runs, 'test_accuracy')} | "
        f"{cell(runs, 'test_macro_f1')} | {cell(runs, 'phase1_val_accuracy')} | {cell(runs, 'seconds', 0)} |"
        for name, runs in by.items())
    return _finetune_text(r, rows) + _finetune_target(by)


def finetune_explore(r: dict) -> str:
    """The one-seed rounds that chose the configurations of the two-seed table."""
    rows = "\n".join(
        f"| {x.get('round', '')} | {x['config']} | "
        + (" | ".join(f"{x[k]:.3f}" for k in ("val_accuracy", "test_accuracy", "test_macro_f1", "phase1_val_accuracy"))
           + f" | {x['seconds']:.0f} |" if "val_accuracy" in x else "failed (a bug since fixed) | | | | |")
        for x in r.get("results", []))
    return f"""## Fine-tuning: exploration rounds (one seed)

The rounds that chose the new defaults and the configurations measured with two seeds below; the same
dataset, model and timing as there. One seed each, so differences under about 1.5 points are noise (the
validation split has 341 images).

| round | configuration | val accuracy | test accuracy | test macro F1 | phase-1 val accuracy | seconds |
| ---: | --- | ---: | ---: | ---: | ---: | ---: |
{rows}
"""


def _finetune_target(by: dict[str, list[dict]]) -> str:
    """The goal for the defaults: +2 points of validation accuracy over the previous defaults at no more
    wall time, and the phase-2 gain over phase 1 at least doubled."""
    old = next((v for k, v in by.items() if k.startswith("previous defaults")), None)
    new = by.get("current defaults")
    if not old or not new or any("val_accuracy" not in x for x in old + new):
        return ""

    def mean(runs, key):
        return statistics.mean(x[key] for x in runs)

    gain = mean(new, "val_accuracy") - mean(old, "val_accuracy")
    time_ratio = mean(new, "seconds") / mean(old, "seconds")
    gains = [mean(runs, "val_accuracy") - mean(runs, "phase1_val_accuracy") for runs in (old, new)]
    checks = [("+2 points of validation accuracy", f"{gain * 100:+.1f} points", gain >= 0.02),
              ("no more wall time", f"{time_ratio:.2f}x the time", time_ratio <= 1.0),
              ("phase-2 gain over phase 1 at least doubled",
               f"{gains[0] * 100:+.1f} -> {gains[1] * 100:+.1f} points ({gains[1] / gains[0]:.2f}x)"
               if gains[0] > 0 else "n/a", gains[0] > 0 and gains[1] >= 2 * gains[0])]
    lines = "\n".join(f"| {goal} | {value} | {'met' if ok else '**missed**'} |" for goal, value, ok in checks)
    return f"""
The goal for the new defaults, against the previous ones (means over the seeds above):

| goal | measured | |
| --- | --- | --- |
{lines}
"""


def _finetune_text(r: dict, rows: str) -> str:
    return f"""## Fine-tuning recipes on real photos

`../shared/datasets/clothing10` (real phone photos, 10 classes, its own train/validation/test splits: 3,068 /
341 / 372 images), MobileNetV2-0.35 with the bundled ImageNet weights, complete `python -m tf_transfer.train`
runs (phase 1 with its own feature cache, then fine-tuning), {r['seeds']} seed(s) each, in turns. Values are
means over seeds (min-max when there are several); seconds are wall time of the whole run.

| configuration | seeds | val accuracy | test accuracy | test macro F1 | phase-1 val accuracy | seconds |
| --- | ---: | ---: | ---: | ---: | ---: | ---: |
{rows}
"""


def _suite_cell(suite: dict | None) -> str:
    if not suite:
        return "not measured"
    status = "" if suite.get("returncode", 0) == 0 else f" ({len(suite.get('failures', []))} failing)"
    return f"{suite['pytest_seconds'] or suite['seconds']:.0f} s, {suite.get('tests', '?')} tests{status}"


def _coverage_cell(cov: dict | None, key: str) -> str:
    return f"{cov[key]['percent']:.1f}% ({cov[key]['covered']} of {cov[key]['lines']} lines)" if cov and key in cov \
        else "not measured"


def _files_table(before: dict, after: dict) -> str:
    rows = []
    for name in ("default", "slow"):
        b, a = (before.get("suites") or {}).get(name, {}), (after.get("suites") or {}).get(name, {})
        files = sorted(set(b.get("per_file", {})) | set(a.get("per_file", {})),
                       key=lambda f: (-max(b.get("per_file", {}).get(f, 0), a.get("per_file", {}).get(f, 0)), f))
        for f in files:
            cells = [f"{x['per_file'][f]:.0f}" if f in x.get("per_file", {}) else "-" for x in (b, a)]
            if cells != ["-", "-"]:
                rows.append(f"| {name} | `{f}` | {cells[0]} | {cells[1]} |")
    return "| suite | file | before (s) | after (s) |\n| --- | --- | ---: | ---: |\n" + "\n".join(rows)


def _slowest_table(r: dict) -> str:
    rows = [(name, t) for name in ("default", "slow") for t in (r.get("suites") or {}).get(name, {}).get("slowest", [])]
    rows.sort(key=lambda x: -x[1]["seconds"])
    return "| suite | test | seconds |\n| --- | --- | ---: |\n" + "\n".join(
        f"| {name} | `{t['test']}` | {t['seconds']:.1f} |" for name, t in rows[:30])


def ci(r: dict, before: dict | None = None, stamp_before: str = "") -> str:
    """The README's commands and the test suites' cost: before and after, per suite, per file, coverage."""
    main = f"{_r(r['main_job_seconds'], 0, ' s')}" if r.get("main_job_seconds") else "not measured in this run"
    if "suites" not in r:  # a result from before the suites were measured one by one
        return f"## The README's commands\n\nThe main job: {main}.\n"
    b = before or {}
    rows = [f"| {label} | {_suite_cell((b.get('suites') or {}).get(k))} | {_suite_cell(r['suites'].get(k))} |"
            for label, k in (("default suite (`python -m pytest -q`)", "default"),
                             ("slow suite (`python -m pytest -q -m slow`)", "slow"))]
    rows += [f"| line coverage of `tf_transfer/`, {label} | {_coverage_cell(b.get('coverage'), k)} | "
             f"{_coverage_cell(r.get('coverage'), k)} |" for label, k in (("default suite", "default"),
                                                                        ("default + slow", "default+slow"))]
    one = (r.get("one_process") or {}).get("default")
    xdist_note = ""
    if one:
        parallel = r["suites"]["default"]
        ratio = (one["pytest_seconds"] or one["seconds"]) / (parallel["pytest_seconds"] or parallel["seconds"])
        xdist_note = (f"\n\npytest-xdist: the default suite over 2 workers (`-n 2 --dist loadgroup`, as configured) "
                      f"took {_suite_cell(parallel)}; in one process (`-n 0`), in the same run, {_suite_cell(one)}: "
                      f"{ratio:.2f}x faster with the workers.")
    targets = ""
    default = r["suites"].get("default")
    if default:
        seconds = default["pytest_seconds"] or default["seconds"]
        targets = (f"\n\nTarget for the default suite, at most 300 s: {'met' if seconds <= 300 else '**missed**'} "
                   f"({seconds:.0f} s).")
    return f"""## The README's commands and the test suites

`benchmarks/bench_ci.py`: the main job (`python -m tf_transfer.train`, each time with an empty cache, as on
a fresh machine): {main}. The default and slow suites, each run once as CI runs them (wall time as pytest
reports it), and line coverage of `tf_transfer/` from separate runs under `coverage run` (subprocesses
included).

| | before{f" ({stamp_before})" if stamp_before else ""} | after |
| --- | --- | --- |
{chr(10).join(rows)}{targets}{xdist_note}

Wall time per test file (setup included, so a shared fixture counts where it is first built):

{_files_table(b, r)}

The 30 slowest tests after (of both suites):

{_slowest_table(r)}
"""


def _seeds(values: list[float]) -> str:
    """Mean over the seeds, with the per-seed values."""
    return f"{statistics.mean(values):.3f} ({', '.join(f'{v:.3f}' for v in values)})"


def _adapt_by_labels(r: dict) -> list[tuple[int, dict[str, list[float]]]]:
    """Test accuracies of bench_adapt's runs per label count: TF-IDF, frozen, fine-tuned, adapted."""
    by: dict[int, list[dict]] = {}
    for run in r["runs"]:
        by.setdefault(run["labels"], []).append(run)
    return [(labels, {k: [f(x) for x in runs] for k, f in (
        ("tfidf", lambda x: x["tfidf"]["test_accuracy"]), ("frozen", lambda x: x["base"]["frozen_test_accuracy"]),
        ("base", lambda x: x["base"]["test_accuracy"]), ("adapted", lambda x: x["adapted"]["test_accuracy"]),
        ("adapted_frozen", lambda x: x["adapted"]["frozen_test_accuracy"]))})
        for labels, runs in sorted(by.items())]


def _adapt_diffs(get: dict[str, list[float]]) -> list[float]:
    """Adapted minus fine-tuned alone, per seed."""
    return [a - b for a, b in zip(get["adapted"], get["base"], strict=True)]


GAIN_EVERY_SEED = "a gain in every seed"


def _adapt_word(diffs: list[float]) -> str:
    """Gain or loss only when every seed agrees, rounded as shown (so a "gain" is never a +0.000 seed)."""
    signs = frozenset((round(d, 3) > 0) - (round(d, 3) < 0) for d in diffs)
    return {frozenset({1}): GAIN_EVERY_SEED, frozenset({-1}): "a loss in every seed"}.get(
        signs, "no consistent difference")


def _adapt_gains(r: dict) -> str:
    """Adapted minus fine-tuned alone, per label count, gain or loss said in words."""
    out = []
    for labels, get in _adapt_by_labels(r):
        diffs = _adapt_diffs(get)
        out.append(f"{labels:,} labels {statistics.mean(diffs):+.3f} ({_adapt_word(diffs)} of {len(diffs)})")
    return "; ".join(out)


def _adapt_expectation(r: dict) -> str:
    """Whether the fewest-labels row shows the gain the issue expected, said as met or missed."""
    labels, get = _adapt_by_labels(r)[0]
    diffs = _adapt_diffs(get)
    word = _adapt_word(diffs)
    verdict = "met" if word == GAIN_EVERY_SEED else "missed"
    return f"{verdict}: at {labels:,} labels {statistics.mean(diffs):+.3f} ({word})."


def _adapt_frozen(r: dict) -> str:
    """The frozen adapted encoder against the frozen checkpoint: what MLM did to the sentence embedding."""
    rows = [(labels, statistics.mean(get["adapted_frozen"]), statistics.mean(get["frozen"]))
            for labels, get in _adapt_by_labels(r)]
    text = "; ".join(f"{labels:,} labels {a:.3f} against {f:.3f}" for labels, a, f in rows) + "."
    if all(a < f for _, a, f in rows):
        text += (" Worse at every label count: masked-language modelling moved the encoder away from the sentence"
                 " embedding MiniLM was trained to give (mean pooling after contrastive training).")
    return text


def adapt(r: dict) -> str:
    if not r:
        return "## Domain adaptation\n\nSkipped: ../shared's emotion set or MiniLM checkpoint is not present.\n"
    a, rows = r["adaptation"], []
    for labels, get in _adapt_by_labels(r):
        gain = _adapt_diffs(get)
        rows.append(f"| {labels:,} | {_seeds(get['tfidf'])} | {_seeds(get['frozen'])} | {_seeds(get['base'])} | "
                    f"{_seeds(get['adapted'])} | {statistics.mean(gain):+.3f} "
                    f"({', '.join(f'{g:+.3f}' for g in gain)}) |")
    b, f = a["before"], a["after"]
    rec = r["mlm_recipe"]
    return f"""## Domain adaptation: masked-language modelling before fine-tuning (real tweets)

`benchmarks/bench_adapt.py`: `pretrain --method mlm` continued all-MiniLM-L6-v2 on the {a['train_texts']:,}
training tweets of `../shared/datasets/emotion` with their labels dropped ({a['epochs']} epochs at
{rec['phase2.learning_rate']:g}, batch {rec['data.batch_size']}, {a['val_texts']:,} of them held out for the
masked-token scores), then both the checkpoint and the adapted checkpoint were fine-tuned with tf_transfer's text
defaults (the same budget) on a seeded, stratified subset of the labelled training tweets; validation and test are
the given splits ({r['data']['val']:,} and {r['data']['test']:,} tweets). Test accuracy, mean over the seeds (per
seed in brackets); "frozen" is phase 1 of the plain checkpoint's run.

| labels | TF-IDF + logistic regression | MiniLM frozen + head | MiniLM fine-tuned | adapted, then fine-tuned \
| adapted minus fine-tuned |
| ---: | ---: | ---: | ---: | ---: | ---: |
{chr(10).join(rows)}

- Adaptation cost {a['minutes']:.1f} min on 2 cores ({', '.join(f'{s:.0f} s' for s in a['epoch_seconds'])} per epoch).
  On the held-out tweets, masked-token accuracy {b['masked_accuracy']:.3f} before and {f['masked_accuracy']:.3f} after;
  perplexity {b['perplexity']:.1f} before and {f['perplexity']:.1f} after.
  MiniLM's checkpoint has no masked-language-model head, so the transform layer starts random: "before" scores
  that random head, not what the encoder knows.
- What adaptation bought, adapted minus fine-tuned alone: {_adapt_gains(r)}. The issue expected a gain where
  labels are few; {_adapt_expectation(r)}
- The adapted encoder frozen + head, against MiniLM frozen + head: {_adapt_frozen(r)}
- `../shared/datasets/sms_spam` was not run: nearly every method reaches about 0.99 on it (its README calls it a
  smoke test), so it cannot show a gain.
"""


RENDERERS = [("input_pipeline", input_pipeline), ("frozen_phase", frozen_phase), ("serving", serving),
             ("transfer", transfer), ("pretrain", pretrain), ("multitask", multitask), ("text", text),
             ("adapt", adapt),
             ("finetune_explore", finetune_explore),
             ("finetune", finetune), ("distribute", distribute), ("speed", speed),
             ("reliability", reliability), ("keras3", keras3), ("ci", ci)]


def benchmarks_md(results: dict[str, dict]) -> str:
    parts = ["# Benchmarks\n\nWritten by `python -m benchmarks.run` from `benchmarks/results/*.json`. Ratios compare "
             "candidates measured in turns in the same run; absolute numbers move with the machine's load, the "
             "ratios much less. Each section says when and on which commit it was measured.\n"]
    for name, fn in RENDERERS:
        record = results.get(name)
        if record is None:
            parts.append(f"## {name}\n\nNot measured yet (`python -m benchmarks.run --only {name}`).\n")
            continue
        if name == "ci" and "ci_before" in results:  # the suites' cost before and after the work on them
            before, result, extra = results["ci_before"], record["result"], ""
            coverage = results.get("ci_coverage")
            if coverage and "coverage" not in result:  # coverage and the one-process run from their own run
                result = {**result, **{k: coverage["result"][k] for k in ("coverage", "one_process")
                                       if k in coverage["result"]}}
                extra = " Coverage and the one-process run: " + _stamp(coverage)
            text = fn(result, before["result"], f"commit `{before['commit']}`")
            parts.append(text + "\n" + _stamp(record) + extra + " Before: " + _stamp(before) + "\n")
            continue
        parts.append(fn(record["result"]) + "\n" + _stamp(record) + "\n")
    return "\n".join(parts)


def readme_figures(results: dict[str, dict]) -> dict[str, str]:
    """Values for the README's <!-- bench:KEY -->...<!-- /bench --> spots."""
    out = {}
    if "ci" in results:
        s = results["ci"]["result"].get("main_job_seconds")
        if s:
            out["main_job"] = f"{s['median']:.0f} s (median of {s['n']} runs, {s['min']:.0f}-{s['max']:.0f} s)"
        suite = (results["ci"]["result"].get("suites") or {}).get("default") or results["ci"]["result"].get(
            "test_suite")
        if suite:
            seconds = suite.get("pytest_seconds") or suite["seconds"]
            out["test_suite"] = f"{seconds / 60:.1f} min in the last measured run"
        slow = (results["ci"]["result"].get("suites") or {}).get("slow")
        if slow:
            out["slow_suite"] = f"{(slow.get('pytest_seconds') or slow['seconds']) / 60:.1f} min"
    if results.get("text", {}).get("result"):
        r = results["text"]["result"]
        out["text"] = (f"{r['finetuned_minilm']['test_accuracy']:.3f} test accuracy fine-tuned, "
                       f"{r['frozen_minilm']['test_accuracy']:.3f} with the encoder frozen, "
                       f"{r['tfidf_logreg']['test_accuracy']:.3f} for TF-IDF + logistic regression")
    if results.get("adapt", {}).get("result"):
        out["adapt"] = _adapt_gains(results["adapt"]["result"])
    return out
