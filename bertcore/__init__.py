"""bertcore: a BERT encoder on fused kernels, with task heads as plugins."""
from .config import BertConfig
from .model import BertEncoder, BertOutput
from .tokenizer import Tokenizer

__version__ = "0.1.0"
__all__ = ["BertConfig", "BertEncoder", "BertOutput", "Tokenizer", "__version__"]
