"""bertcore: a BERT encoder on fused kernels, with task heads as plugins."""
from .config import BertConfig
from .model import BertEncoder, BertOutput
from .tokenizer import Tokenizer
from .heads import Head, HeadInfo
from .hookspecs import hookimpl
from .plugins import create_head, list_heads
from .taskmodel import TaskModel
from .trainstate import set_seed
from .training import Trainer, TrainingArgs
from .pretraining import pretrain

__version__ = "0.1.0"
__all__ = ["BertConfig", "BertEncoder", "BertOutput", "Tokenizer", "__version__",
           "Head", "HeadInfo", "hookimpl", "create_head", "list_heads", "TaskModel",
           "Trainer", "TrainingArgs", "pretrain", "set_seed"]
