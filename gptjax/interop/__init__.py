"""Model folders in and out: Hugging Face GPT-2 (gptjax.interop.hf) and other registered formats
(gptjax.interop.formats). Importing it provides GPT.from_pretrained and GPT.save_pretrained."""

from gptjax.interop import hf
from gptjax.interop.formats import FORMATS, register_format

__all__ = ["FORMATS", "hf", "register_format"]
