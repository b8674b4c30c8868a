"""LeNet-5 as LeCun et al. built it in 1998 (``LeNet5``), its variants, the digit data, isolated-digit
training (``python -m lenet.train``), checkpoints (``load``) and ``classify``."""
from . import checkpoint
from .checkpoint import load
from .data import ElasticDistortion, RandomAffine, load_digits, load_idx_dataset, prepare, read_idx
from .model import LeNet5, LeNet5FullC3, LeNet5Modern, build, digit_prototypes, map_loss
from .optim import SDLM, gauss_newton_diagonal, paper_learning_rate
from .predict import classify
from .recognizer import StringReader, RecognitionTransformer, recognize, save_reader
from .combined import CombinedReader, save_combined
