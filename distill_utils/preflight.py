"""Checks that take seconds and run before any training: the data (annotation files, every image file, the text
encoder or its cached features), expert buffers against the phases that read them (timestamps, read without
loading the tensors), free disk for what will be written and GPU memory (footprint.py). Every entry script calls
`check_start`; `prepare_data.py check` runs `check_recipe`, the same checks for the paper's whole recipe of a
dataset, including the buffers it has yet to write."""
import os

from common.errors import UserError
from distill_utils import footprint
from distill_utils.datasets.annotations import check_images_exist, load_retrieval_split, load_train_pairs
from distill_utils.datasets.image_cache import ImageCache
from distill_utils.datasets.images import read_image
from distill_utils.datasets.text_features import cache_path
from distill_utils.files import buffers
from distill_utils.phases import Phase
from networks.dual_encoder import NetConfig, NetworkFactory
from networks.hub import hub_reachable
from networks.text_encoders import resolve_model_dir, text_width

SPLITS = ("train", "val", "test")


def check_data(data, splits):
    """Annotation files of `splits`, every image they name and the text encoder; returns the lines that describe
    them."""
    return check_files(data, splits) + [check_text_encoder(data, splits)]


def check_files(data, splits):
    """Annotation files of `splits` and every image they name (the first one decoded)."""
    loaded = {}
    for split in splits:
        loaded[split] = load_train_pairs(data.dataset, data.ann_root, data.image_root) if split == "train" else \
            load_retrieval_split(data.dataset, split, data.ann_root, data.image_root)
    paths = list(dict.fromkeys(p for s in loaded.values() for p in s.image_paths))
    check_images_exist(paths)
    read_image(paths[0], data.image_size)
    counts = ", ".join(f"{s} {len(set(a.image_paths)):,} images / {len(a.captions if s == 'train' else a.texts):,} "
                       "captions" for s, a in loaded.items())
    return [f"annotations: {data.ann_root}: {counts}", f"images: {len(paths):,} files under {data.image_root}, all "
            "present"]


def check_text_encoder(data, splits):
    """The text encoder is on this machine, can be downloaded, or the features of every split are cached."""
    spec, tags = data.text_encoder, [f"{data.dataset}_{split}" for split in splits]
    if spec.startswith("openclip:"):
        return f"text encoder: {spec} (open_clip: checked when it loads)"
    try:
        return f"text encoder: {spec} at {resolve_model_dir(spec, download=False)}"
    except UserError as missing:
        if hub_reachable():
            return f"text encoder: {spec} is downloaded on first use"
        if all(os.path.isfile(cache_path(data.feature_cache, tag, spec)) for tag in tags):
            return f"text encoder: {spec} is not here, but the features of every split are cached in {data.feature_cache}"
        raise missing


def need_timestamps(phase, expert_epochs, length, where, path):
    """Refuse a buffer whose experts are too short for the phase's start epochs."""
    last_needed = phase.max_start_epoch - 1 + expert_epochs
    if last_needed >= length:
        raise UserError(f"--max_start_epoch {phase.max_start_epoch} + --expert_epochs {expert_epochs} needs "
                        f"timestamp {last_needed}, but {where} ({os.path.basename(path)}) records {length} "
                        f"(0..{length - 1})")


def buffer_length(directory, flag="--buffer_path"):
    """(experts, timestamps of the shortest, its file) of a buffer directory, read memory-mapped."""
    described = [(buffers.describe_file(img), img) for _, img, _ in buffers.BufferDir(directory, flag).pairs()]
    (_, length, _), path = min(described, key=lambda d: d[0][1])
    return sum(d[0][0] for d in described), length, path


def check_phase_buffers(phases, expert_epochs):
    lines = []
    for phase in phases:
        experts, length, path = buffer_length(phase.buffer_path)
        need_timestamps(phase, expert_epochs, length, f"--buffer_path {phase.buffer_path}", path)
        lines.append(f"buffer of phase {phase.index}: {experts} experts x {length} timestamps in {phase.buffer_path}")
    return lines


def check_start(data, splits, device, gpu_needs, phases=(), expert_epochs=1):
    """The checks at the start of an entry script: the first problem is a one-line UserError; prints one line."""
    checked = check_data(data, splits) + check_phase_buffers(phases, expert_epochs)
    gpu = footprint.check_gpu(device, gpu_needs)
    print(f"preflight ok: {', '.join(line.split(':')[0] for line in checked)}; {gpu}", flush=True)


def recipe_gpu_needs(recipe):
    est = footprint.gpu_estimate
    return {"expert epoch": est("expert epoch", recipe.image_encoder, recipe.image_size, recipe.expert_batch),
            "distillation": est("distillation", recipe.image_encoder, recipe.image_size, recipe.mini_batch_size),
            "evaluation student": est("evaluation student", recipe.image_encoder, recipe.image_size, recipe.eval_batch)}


def _recipe_buffers(recipe, data, normal_dir):
    """(lines about the recipe's buffers, the bytes still to be written, the problems found): what exists is
    checked against the phases, what does not is planned with its size."""
    width = text_width(data.text_encoder) or 768
    net = NetworkFactory(NetConfig(recipe.image_encoder, recipe.image_size, width, True,
                                   image_pretrained=False)).build(seed=0)
    lines, problems, to_write, timestamps = [], [], 0, recipe.train_epochs + 1
    if os.path.isdir(normal_dir) and buffers.BufferDir(normal_dir).has_experts():
        experts, timestamps, path = buffer_length(normal_dir)
        manifest = buffers.BufferDir(normal_dir).read_manifest()
        published = manifest is None or "published" in manifest  # published buffers come without one, or fetched
        missing = 0 if published else max(0, recipe.num_experts - experts)
        to_write += missing * footprint.expert_bytes(net, recipe.train_epochs + 1)
        lines.append(f"experts: {experts} x {timestamps} timestamps in {normal_dir}" +
                     (f"; buffer.py trains {missing} more" if missing else ""))
        experts += missing
    else:
        experts = recipe.num_experts
        to_write += experts * footprint.expert_bytes(net, timestamps)
        lines.append(f"experts: none yet in {normal_dir}; buffer.py writes {experts} x {timestamps} timestamps "
                     f"({footprint.human_bytes(to_write)}; or `prepare_data.py buffers` fetches the published ones)")
    for p, (directory, (start, end)) in enumerate(zip(recipe.shortcut_dirs(normal_dir), recipe.windows)):
        phase = Phase(p, directory, recipe.min_start_epoch[p], recipe.max_start_epoch[p], recipe.num_queries[p], 1)
        try:
            if os.path.isdir(directory) and buffers.BufferDir(directory).has_experts():
                lines += check_phase_buffers([phase], recipe.expert_epochs)
                continue
            size = experts * footprint.expert_bytes(net, end - start)
            to_write += size
            if end > timestamps:
                raise UserError(f"{normal_dir}: experts of {timestamps} timestamps, the recipe's convexify.py --end "
                                f"{end} needs more")
            need_timestamps(phase, recipe.expert_epochs, end - start, f"convexify.py --start {start} --end {end}",
                            directory)
            lines.append(f"phase {p}: convexify.py writes {directory} ({footprint.human_bytes(size)})")
        except UserError as err:
            problems.append(err)
    return lines, to_write, problems


def check_recipe(recipe, data, buffer_path, device):
    """Every check of the recipe, each reported as it runs ('ok' or 'FAILED'); the failures raise one UserError at
    the end."""
    normal_dir = buffers.BufferDir.of_network(buffer_path, data.dataset, recipe.image_encoder, data.text_encoder,
                                              recipe.loss_type).path
    failures, state = [], {"to_write": 0}

    def step(name, run):
        try:
            lines = run()
        except UserError as err:
            failures.append(f"{name}: {err}")
            print(f"FAILED {name}: {err}", flush=True)
            return
        for line in lines:
            print(f"ok     {line}", flush=True)

    def buffers_step():
        lines, state["to_write"], problems = _recipe_buffers(recipe, data, normal_dir)
        if problems:
            for line in lines:
                print(f"ok     {line}", flush=True)
            raise problems[0]
        return lines

    def cache_line():
        cache = ImageCache.find(data.image_root, data.image_size)
        if cache is not None:
            return [f"image cache: {cache.directory} ({len(cache.pixels):,} images)"]
        return [f"image cache: none at {data.image_size}px (optional: without it every epoch decodes the images; "
                f"`python prepare_data.py cache --dataset {data.dataset} --image_root {data.image_root} --ann_root "
                f"{data.ann_root}` writes one)"]

    step("data", lambda: check_files(data, SPLITS))
    step("text encoder", lambda: [check_text_encoder(data, SPLITS)])
    step("image cache", cache_line)
    step("buffers", buffers_step)
    step("disk", lambda: [footprint.check_disk(buffer_path, state["to_write"], "the buffers still to be written",
                                               "--buffer_path")])
    step("GPU memory", lambda: [footprint.check_gpu(device, recipe_gpu_needs(recipe))])
    if failures:
        raise UserError(f"{len(failures)} check(s) failed; first: {failures[0]}")
    return normal_dir

