"""Training: the diffusion model (hybrid loss), the noisy classifier and the upsampler, with EMA,
mixed precision, gradient accumulation, DDP under torchrun, and bit-exact resume."""
from adm.train.config import TrainConfig
from adm.train.data import BatchOrder, TensorData, load_tensor_data
from adm.train.ema import EMA
from adm.train.loop import TrainingDiverged, train

__all__ = ["EMA", "BatchOrder", "TensorData", "TrainConfig", "TrainingDiverged", "load_tensor_data", "train"]
