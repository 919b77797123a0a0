"""The diffusers/PyTorch backend: Stable Diffusion 1.x, 2.x, SDXL and the flow-matching families
(SD 3/3.5, FLUX.1, FLUX.2 Klein, Z-Image: ``workers.backends.flow``) on CPU, CUDA or Apple's
MPS.

The pipeline class comes from the model's family (``workers.models.families``): read from the model's
configs before any weights are loaded, so a model of another kind is refused with one line.

Noise comes from a CPU ``torch.Generator`` seeded per job, and torch runs with a fixed thread
count, so the same job gives the same pixels in any process on the same kind of machine.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from contract.errors import JobInputError, JobInterrupted, ModelLoadError, ModelNotFound
from contract.job import GenerationRequest
from workers import memory
from workers.backends import GenerationResult, batch_key
from workers.backends import flow as flow_family
from workers.models import (
    builtin_model,
    checkpoint_file,
    expand_path,
    families,
    hub,
    local_folder,
    looks_like_path,
    model_fingerprint,
)
from workers.models.checkpoints import is_checkpoint_file
from workers.models.schedulers import FLOW_A1111_SCHEDULE, SCHEDULERS, build_scheduler
from workers.tuning import Tuning
from workers.tuning import apply as apply_tuning

logger = logging.getLogger(__name__)

# Library chatter (progress bars, optional-dependency notices) would bury the worker's own log.
for _var, _value in (
    ("TRANSFORMERS_VERBOSITY", "error"),
    ("DIFFUSERS_VERBOSITY", "error"),
    ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
):
    os.environ.setdefault(_var, _value)


def pick_device(requested: str = "auto") -> str:
    import torch

    if requested != "auto":
        if requested == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError("device 'cuda' was asked for but torch sees no CUDA GPU")
        if requested == "mps" and not torch.backends.mps.is_available():
            raise ModelLoadError("device 'mps' was asked for but torch sees no Apple GPU (MPS)")
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def model_source(model: str) -> str:
    """Where ``from_pretrained`` finds a manifest's model: a built-in model's folder
    (``workers.models.BUILTIN_MODELS``), a local diffusers folder, a single-file checkpoint, or
    a hub id."""
    builtin = builtin_model(model)
    if builtin is not None:
        return str(builtin)
    folder = local_folder(model)
    if folder is not None:
        return str(folder)
    checkpoint = checkpoint_file(model)
    if checkpoint is not None:
        return str(checkpoint)
    if is_checkpoint_file(model):
        raise JobInputError(f"model {model!r}: no such single-file checkpoint on this machine")
    if looks_like_path(model) or expand_path(model).exists():
        # Retrying cannot help: the job fails at once (JobInputError), not three times.
        raise JobInputError(
            f"model {model!r} is not a diffusers folder (no model_index.json there)"
        )
    return model  # a hub id: from_pretrained finds it in the local HF cache or downloads it


# What huggingface_hub and diffusers say when a file is neither cached nor downloadable.
_UNREACHABLE = (
    "cached",
    "local_files_only",
    "offline",
    "internet connection",
    "snapshot folder",
    "name or service not known",
    "connecterror",
)


def _hub_unreachable(text: str) -> bool:
    return any(marker in text.lower() for marker in _UNREACHABLE)


def hub_source_ready(model: str) -> bool:
    """Whether a hub id may be loaded with the hub's help: True when it is online (a load
    checks for a newer revision, or downloads); False when only the cache may be read. A model
    neither cached nor reachable is refused here, before huggingface_hub would spend about
    23 s in retries: ModelNotFound (not retried) when the hub says it has no such model or
    HF_HUB_OFFLINE forbids asking, ModelLoadError (retried: the network may come back) when
    the hub's host does not answer."""
    if hub.online():
        if not hub.is_cached(model) and hub.exists(model) is False:
            raise ModelNotFound(f"model {model!r}: {hub.missing_on_hub_reason(model)}")
        return True
    if hub.is_cached(model):
        return False
    reason = f"model {model!r}: {hub.not_found_reason(model)}"
    if hub.offline_by_setting():
        raise ModelNotFound(reason)
    raise ModelLoadError(reason)


def _hub_says_not_found(exc: BaseException) -> bool:
    """Whether the hub's answer under a load's error was "no such model"."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    seen: BaseException | None = exc
    for _ in range(10):  # a short chain: diffusers wraps huggingface_hub's error once or twice
        if seen is None:
            return False
        if isinstance(seen, RepositoryNotFoundError):
            return not isinstance(seen, GatedRepoError)  # gated: there, but not for us yet
        seen = seen.__cause__ or seen.__context__
    return False


def source_family(source: str) -> families.ModelInfo | None:
    """The family of the model at ``source`` from its configs, before any weights are read:
    UnsupportedModel (a JobInputError) for a kind this tool does not run; None when there are
    no configs to read (a single file; a hub id neither cached nor reachable: the load says)."""
    if is_checkpoint_file(source):
        return None
    folder = Path(source)
    if (folder / "model_index.json").is_file():
        read = families.folder_reader(folder)
    elif folder.exists() or looks_like_path(source):
        return None
    else:
        read = families.hub_cache_reader(source)
        if read("model_index.json") is None:
            if not hub.online():
                return None  # offline and not cached: the load says what to fetch
            read = families.hub_reader(source)
            if read("model_index.json") is None:
                return None
    try:
        return families.detect(read)
    except families.UnsupportedModel as exc:
        raise families.UnsupportedModel(f"model {source!r}: {exc}") from None


def load_pipeline(source: str, dtype: Any) -> Any:
    """The pipeline of the model's family (``StableDiffusionPipeline`` for SD 1.x/2.x,
    ``StableDiffusionXLPipeline`` for SDXL) from a folder, hub id or single file, quietly,
    without a safety checker or watermark."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    if is_checkpoint_file(source) and Path(source).is_file():
        return _load_checkpoint(Path(source), dtype)
    hub_id = not Path(source).exists() and not looks_like_path(source)
    local_only = hub_id and not hub_source_ready(source)
    with hub.quiet():
        info = source_family(source)  # refuses an unsupported kind before loading any weights
    pipeline = info.pipeline if info is not None else families.SD_PIPELINE
    options: dict[str, Any] = {}
    if pipeline == families.SDXL_PIPELINE:
        options = {"add_watermarker": False}
    elif pipeline == families.SD_PIPELINE:
        options = {"safety_checker": None, "requires_safety_checker": False}
    if local_only:
        options["local_files_only"] = True  # cached, and no hub to ask: never its retries
    try:
        with hub.quiet():
            pipe = getattr(diffusers, pipeline).from_pretrained(source, dtype=dtype, **options)
    except (OSError, ValueError) as exc:
        if hub_id and _hub_says_not_found(exc):
            raise ModelNotFound(f"model {source!r}: {hub.missing_on_hub_reason(source)}") from exc
        if not Path(source).exists() and _hub_unreachable(str(exc)):
            # diffusers' advice (pass local_files_only=False, see a stack trace we do not
            # show) means nothing to a user of this tool; say what to do instead.
            raise ModelLoadError(
                f"model {source!r} is not in this machine's Hugging Face cache, and the hub "
                "cannot be reached (offline, or HF_HUB_OFFLINE=1): download it where there "
                f"is a network (`hf download {source}`) or give a local diffusers folder"
            ) from exc
        raise ModelLoadError(f"cannot load a {pipeline} from {source}: {exc}") from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _load_checkpoint(path: Path, dtype: Any) -> Any:
    from workers.models.checkpoints import load_checkpoint

    try:
        pipe = load_checkpoint(path, dtype)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        if _hub_unreachable(str(exc)):
            raise ModelLoadError(
                f"single-file checkpoint {path}: diffusers needs the configuration of its model "
                "family, which is not in this machine's Hugging Face cache (for Stable Diffusion "
                "1.x: `hf download stable-diffusion-v1-5/stable-diffusion-v1-5 --include "
                "'*.json' '*.txt'` where there is a network), or use a diffusers folder"
            ) from exc
        raise ModelLoadError(f"cannot load single-file checkpoint {path}: {exc}") from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _stack(values: list[Any]) -> Any:
    """One embedding keyword's values for each prompt of a batch, as one: tensors concatenated
    along the batch, lists (Z-Image's, a tensor per prompt) joined; None stays None."""
    import torch

    if values[0] is None:
        return None
    if isinstance(values[0], list):
        return [tensor for value in values for tensor in value]
    return torch.cat(values)


class DiffusersBackend:
    """A loaded pipeline of one of the families (``workers.models.families``), kept for every
    job that names its model."""

    name = "diffusers"

    def __init__(
        self,
        model: str,
        *,
        source: str | None = None,
        quantization: str = "fp16",
        device: str = "auto",
        threads: int = 2,
        tuning: Tuning | None = None,
        pipeline: Any = None,
    ) -> None:
        """``pipeline``: one already built (benchmarks build random-weight SD 1.5 and SDXL
        architectures in memory) instead of loading ``source`` or ``model``."""
        import torch

        self.model = model
        self.quantization = quantization
        self.threads = threads
        # The thread count changes how reductions are split, and so the pixels: fix it (and
        # record it: reproduce uses the recorded count, never the current default).
        torch.set_num_threads(threads)
        self.device = pick_device(device)
        self.tuning = tuning or Tuning()
        problem = self.tuning.problem(self.device)
        if problem is not None:
            raise JobInputError(problem)
        self.tuning_label = self.tuning.label
        # A compressed variant is a model folder of its own, found by the pipeline cache.
        self.fingerprint: str | None = None
        where = None
        if pipeline is None:
            where = source or model_source(model)
            with hub.quiet():
                ahead = source_family(where)
        else:
            ahead = families.of_pipeline(pipeline)
        flow = ahead is not None and ahead.family.kind == families.FLOW
        self.dtype = memory.run_dtype(self.device, flow)  # fp32 on the CPU; bf16 or fp16 on GPUs
        self._torch_dtype = {
            "fp32": torch.float32,
            "bf16": torch.bfloat16,
            "fp16": torch.float16,
        }[self.dtype]
        if where is not None:
            pipe = load_pipeline(where, self._torch_dtype)
            self.fingerprint = model_fingerprint(where)
        else:
            pipe = pipeline.to(dtype=self._torch_dtype)
            pipe.set_progress_bar_config(disable=True)
        # --low-memory on a GPU keeps a flow model's components in the CPU's memory, each moved
        # to the GPU only while it runs (apply_tuning): never all of it on the GPU at once.
        offload = flow and self.tuning.low_memory and self.device == "cuda"
        self.pipe = pipe if offload else pipe.to(self.device)
        self.info = families.of_pipeline(pipe)
        self.family = self.info.family.name
        self._flow = self.info.family.kind == families.FLOW
        self._xl = self.info.pipeline == families.SDXL_PIPELINE
        self._text_length = flow_family.max_sequence_length(pipe, self.info) if self._flow else None
        if self._xl and self.dtype == "fp16" and pipe.vae.config.get("force_upcast", False):
            # SDXL's VAE overflows in fp16 (its config says so): it decodes in fp32, as the
            # SDXL pipeline does (kept there, rather than cast back and forth per image).
            pipe.vae.to(torch.float32)
        # The model's own scheduler config: its prediction type (v-prediction for SD 2.x 768)
        # and timestep spacing carry over to every scheduler a job names.
        self._scheduler_config = dict(pipe.scheduler.config)
        apply_tuning(pipe, self.tuning, self.device)

    @functools.cached_property
    def _versions(self) -> dict[str, str]:
        import diffusers
        import torch
        import transformers

        return {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "platform": platform.platform(),
            # Not library versions, but as much causes of different pixels.
            "model_family": self.family,
            **({"model_fingerprint": self.fingerprint} if self.fingerprint else {}),
            # What the job's guidance_scale meant to this model (families.CFG, ...).
            **({"guidance": self.info.guidance} if self._flow else {}),
        }

    def versions(self) -> dict[str, str]:
        return dict(self._versions)

    def a1111_fields(self, job: dict[str, Any]) -> dict[str, object]:
        """What A1111/Forge write for a flow model beside the usual infotext: the "Simple"
        schedule its samplers step on, and FLUX.1 dev's guidance as "Distilled CFG Scale"
        (its "CFG scale" is then 1, as Forge writes it)."""
        if not self._flow:
            return {}
        fields: dict[str, object] = {}
        if SCHEDULERS[job["scheduler"]].a1111_schedule is None:
            fields["Schedule type"] = FLOW_A1111_SCHEDULE
        if self.info.guidance != families.CFG:
            fields["CFG scale"] = 1
        if self.info.guidance == families.DISTILLED:
            fields["Distilled CFG Scale"] = f"{float(job['guidance_scale']):g}"
        return fields

    def generate(
        self, request: GenerationRequest, should_stop: Callable[[], bool] | None = None
    ) -> GenerationResult:
        return self.generate_batch([request], should_stop)[0]

    def generate_batch(
        self, requests: Sequence[GenerationRequest], should_stop: Callable[[], bool] | None = None
    ) -> list[GenerationResult]:
        """The images of several compatible requests (``batch_key`` equal: prompts, negative
        prompts and seeds may differ) in one pipeline call: each image's noise comes from its
        own CPU generator, so each is the image its request gets alone (bit for bit on the
        CPU, tests/unit/test_batching.py). Stage times are the batch's, shared out equally."""
        import torch

        if not requests:
            return []
        first = requests[0]
        if any(batch_key(r) != batch_key(first) for r in requests):
            raise ValueError("a batch mixes sizes, steps, schedulers or guidance scales")
        pipe = self.pipe
        n = len(requests)
        if self._flow:
            do_cfg = flow_family.uses_cfg(self.info, first.guidance_scale)
            options = flow_family.call_options(
                self.info, first.guidance_scale, self._text_length or 0
            )
        else:
            do_cfg = first.guidance_scale > 1.0
            options = {"guidance_scale": first.guidance_scale}
        # 1. A fresh scheduler of the batch's kind (schedulers keep per-run state).
        pipe.scheduler = build_scheduler(
            first.scheduler, self._scheduler_config, self.info.family.kind
        )

        with torch.inference_mode():
            # 2. Text encoding, prompt by prompt (the text encoder's cost is small), stacked.
            t0 = time.perf_counter()
            cut = [
                flow_family.truncation(pipe, self.info, r.prompt, self._text_length)
                for r in requests
            ]
            parts = [self._encode(r, do_cfg) for r in requests]
            embeddings = {k: _stack([p[k] for p in parts]) for k in parts[0]}
            self._sync()
            t1 = time.perf_counter()

            # 3. Denoising, with the pipeline's own loop; the callback times each step and
            # lets a shutdown or cancel stop between steps.
            step_ends: list[float] = []

            def on_step_end(_pipe: Any, _i: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
                self._sync()
                step_ends.append(time.perf_counter())
                if should_stop is not None and should_stop():
                    raise JobInterrupted(f"stopped after step {len(step_ends)}")
                return kwargs

            # SDXL's size/crop conditioning is left to the pipeline: original_size and
            # target_size default to (height, width), the crop to (0, 0).
            with self._unet_layout(n, do_cfg):
                latents = pipe(
                    **embeddings,
                    **options,
                    num_inference_steps=first.steps,
                    height=first.height,
                    width=first.width,
                    generator=[torch.Generator("cpu").manual_seed(r.seed) for r in requests],
                    output_type="latent",
                    callback_on_step_end=on_step_end,
                ).images
            t2 = time.perf_counter()

            # 4. VAE decode, image by image: a batched decode would not save the CPU anything
            # and is not bit-identical to the lone image's.
            images = [
                pipe.image_processor.postprocess(
                    self._decode(latents[i : i + 1], first), output_type="pil"
                )[0]
                for i in range(n)
            ]
            t3 = time.perf_counter()

        starts = [t1, *step_ends[:-1]]
        step_times = [round((e - s) / n, 6) for s, e in zip(starts, step_ends, strict=True)]
        return [
            GenerationResult(
                image=image,
                text_encode_s=(t1 - t0) / n,
                denoise_s=(t2 - t1) / n,
                decode_s=(t3 - t2) / n,
                unet_evaluations=len(step_ends) * (2 if do_cfg else 1),  # denoiser calls
                step_times=step_times,
                batch_size=n,
                truncated=truncated,
            )
            for image, truncated in zip(images, cut, strict=True)
        ]

    @property
    def fused_batches(self) -> bool:
        """Whether a batch's UNet evaluations run as one call. On the CPU they do not: MKL and
        oneDNN pick other kernels for other batch sizes (a matrix-vector product for one row),
        so a fused batch of 4 differs from the lone images by up to 1/255 in pixels (5e-7 in the
        first layer's activations); each image's pair of guidance halves runs as the lone job's
        call does, and the images are bit-identical; ``--fused-batches`` trades that for speed
        (benchmarks/throughput.py). On CUDA and MPS the batch is fused: that is the speed-up,
        and fp16 kernels differ by batch size there too (a stated PSNR, not bit-identity)."""
        return self.device != "cpu" or self.tuning.fused_batches

    @contextlib.contextmanager
    def _unet_layout(self, n: int, do_cfg: bool) -> Iterator[None]:
        """Within a batch of ``n`` images on an unfused device, the UNet evaluates image by
        image: the pipeline's batch is [negatives..., prompts...] (with guidance), and image
        i's call gets rows (i, n + i), exactly the two rows its lone job's call has. A flow
        model's transformer likewise (Klein's guidance halves come as calls of their own);
        FLUX.1's position ids (one 2-D table for the whole batch) are not split. Z-Image's
        transformer takes its latents and captions as lists, a tensor per row, and gives a list
        back: a list is split and merged as a batch's tensors are."""
        if n == 1 or self.fused_batches:
            yield
            return
        import torch

        denoiser = self.pipe.transformer if self._flow else self.pipe.unet
        forward = denoiser.forward
        halves = flow_family.stacked_halves(self.info, do_cfg) if self._flow else 2 if do_cfg else 1

        def per_image(*args: Any, **kwargs: Any) -> Any:
            first = args[0] if args else kwargs.get("hidden_states", kwargs.get("sample"))
            assert first is not None, "a denoiser call without its latents"
            rows = len(first) if isinstance(first, list) else first.shape[0]

            def part(value: Any, i: int, name: str = "") -> Any:
                if isinstance(value, dict):
                    return {k: part(v, i, k) for k, v in value.items()}
                if isinstance(value, list) and len(value) == rows:  # Z-Image's rows
                    return [value[i + k * n] for k in range(halves)]
                if name in ("img_ids", "txt_ids") and torch.is_tensor(value) and value.ndim == 2:
                    return value  # FLUX.1's ids: shared by every row
                if torch.is_tensor(value) and value.ndim > 0 and value.shape[0] == rows:
                    return value[[i + k * n for k in range(halves)]]
                return value

            kwargs["return_dict"] = False
            outs = [
                forward(
                    *(part(a, i) for a in args),
                    **{k: part(v, i, k) for k, v in kwargs.items()},
                )[0]
                for i in range(n)
            ]
            if isinstance(outs[0], list):
                return ([out[k] for k in range(halves) for out in outs],)
            merged = torch.cat([out[k : k + 1] for k in range(halves) for out in outs])
            return (merged,)

        denoiser.forward = per_image
        try:
            yield
        finally:
            del denoiser.forward  # back to the class's method

    def _encode(self, request: GenerationRequest, do_cfg: bool) -> dict[str, Any]:
        """The prompt's embeddings as the pipeline's keyword arguments. SDXL's pipeline runs
        the prompt through both its text encoders (the second gives the pooled embedding); an
        empty negative prompt is its zeros, as SDXL was trained."""
        if self._flow:
            return flow_family.encode(
                self.pipe, self.info, request, do_cfg, self.device, self._text_length or 0
            )
        negative = request.negative_prompt or None
        if self._xl:
            prompt, negative_embeds, pooled, negative_pooled = self.pipe.encode_prompt(
                prompt=request.prompt,
                device=self.device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=do_cfg,
                negative_prompt=negative,
            )
            return {
                "prompt_embeds": prompt,
                "negative_prompt_embeds": negative_embeds,
                "pooled_prompt_embeds": pooled,
                "negative_pooled_prompt_embeds": negative_pooled,
            }
        prompt, negative_embeds = self.pipe.encode_prompt(
            request.prompt, self.device, 1, do_cfg, negative
        )
        return {"prompt_embeds": prompt, "negative_prompt_embeds": negative_embeds}

    def _decode(self, latents: Any, request: GenerationRequest) -> Any:
        """Latents to an image tensor, as the family's pipeline decodes them (SDXL: in the
        VAE's dtype, unscaled by its latents' mean and spread when its config gives them)."""
        if self._flow:
            return flow_family.decode(self.pipe, self.info, latents, request.width, request.height)
        vae = self.pipe.vae
        config = vae.config
        if self._xl:
            latents = latents.to(vae.dtype)
            mean, std = config.get("latents_mean"), config.get("latents_std")
            if mean is not None and std is not None:
                shape = (1, len(mean), 1, 1)
                mean_t = latents.new_tensor(mean).view(shape)
                std_t = latents.new_tensor(std).view(shape)
                latents = latents * std_t / config.scaling_factor + mean_t
                return vae.decode(latents, return_dict=False)[0]
        return vae.decode(latents / config.scaling_factor, return_dict=False)[0]

    def _sync(self) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
        elif self.device == "mps":
            torch.mps.synchronize()
