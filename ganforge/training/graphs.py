"""Training steps replayed from CUDA graphs (`--cuda-graphs`) where a step repeats exactly.

A step of small networks is over a thousand kernel launches, each costing microseconds of Python and
driver work, so at low resolutions the GPU waits for the host. A CUDA graph records one step's
launches and replays them in one call. That needs a step whose kernels and shapes are the same
every time: the batch is copied into static input buffers, the EMA's decay and ADA's p are device
tensors, Adam runs in its capturable form, the learning rates stay as they were captured, and the
run's random generators are registered with the graph so that each replay draws fresh numbers.

Steps that are not like that run eagerly: PGGAN's fades (alpha changes every step), a model's host
steps (BEGAN's learning-rate window), fp16 (the loss scaler reads the host), several processes. A
new stage, batch, set of optimizers or learning rate starts a new graph, captured after a few eager
warm-up steps on a side stream, as CUDA requires.

Written here rather than with torch.cuda.make_graphed_callables, which graphs one module's forward
and backward, not a whole step with its optimizers, penalties (double backward) and EMA.
"""

from __future__ import annotations

import torch

from ganforge.models.base import GanModel, Schedule
from ganforge.training.distributed import Dist
from ganforge.training.step import StepResult, device_step

WARMUP_STEPS = 3  # eager steps on a side stream before a capture (optimizer state, cuDNN's choices)


class GraphedSteps:
    """The run's steps, replayed from a graph where they can be. With `capture` False the same
    graph-ready step runs eagerly (static buffers, the decay as a device tensor; Adam stays as it
    is, capturable only on GPUs): what the CPU can check of it."""

    def __init__(self, capture: bool):
        self.capture = capture
        self.key: tuple | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.warm = 0
        self.inputs: tuple[torch.Tensor, ...] = ()
        self.beta: torch.Tensor | None = None
        self.result: StepResult | None = None  # the captured step's outputs, rewritten by each replay
        self.captures = 0  # graphs captured so far (for the log and the tests)

    def replayable(self, model: GanModel, state, sched: Schedule, opts, world: int) -> bool:
        return (sched.alpha == 1.0 and opts.precision != "fp16" and world == 1
                and not model.host_step(state.images_seen, sched.batch))

    def step(self, model: GanModel, state, sched: Schedule, opts, ddp: Dist, device: torch.device,
             real_u8: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, beta: float) -> StepResult:
        key = (sched.resolution, sched.batch, sched.stage, tuple(map(id, state.optimizers.values())),
               tuple(group["lr"] for opt in state.optimizers.values() for group in opt.param_groups))
        if key != self.key:
            self.start_graph(key, state, real_u8, labels, indices, device)
        static_images, static_labels, static_indices = self.inputs
        static_images.copy_(real_u8)
        static_labels.copy_(labels)
        static_indices.copy_(indices)
        self.beta.fill_(beta)

        def run() -> StepResult:
            return device_step(model, state, sched, opts, ddp, device, static_images, static_labels, static_indices,
                               self.beta)

        if not self.capture:
            return run()
        if self.graph is not None:
            self.graph.replay()
            return self.replayed()
        if self.warm < WARMUP_STEPS:
            return self.warm_up(run, device)
        return self.capture_and_replay(run, state)

    def start_graph(self, key: tuple, state, real_u8, labels, indices, device: torch.device) -> None:
        self.key, self.graph, self.warm = key, None, 0
        self.inputs = (torch.empty_like(real_u8), torch.empty_like(labels), torch.empty_like(indices))
        self.beta = torch.zeros((), device=device)
        for opt in state.optimizers.values():  # step counts and updates on the device (a GPU's only)
            for group in opt.param_groups:
                group["capturable"] = self.capture

    def warm_up(self, run, device: torch.device) -> StepResult:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            result = run()
        torch.cuda.current_stream(device).wait_stream(side)
        self.warm += 1
        return result

    def capture_and_replay(self, run, state) -> StepResult:
        graph = torch.cuda.CUDAGraph()
        graph.register_generator_state(state.generator)
        if state.augmenter is not None and state.augmenter.active:
            graph.register_generator_state(state.augmenter.generator)
        with torch.cuda.graph(graph):
            self.result = run()
        self.graph = graph
        self.captures += 1
        graph.replay()  # capturing records the step without running it
        return self.replayed()

    def replayed(self) -> StepResult:
        """The captured step's outputs as the last replay left them, in dicts of the caller's own."""
        return StepResult(dict(self.result.losses), dict(self.result.stats), self.result.real_scores)
