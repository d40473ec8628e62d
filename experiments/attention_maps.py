r"""Per-layer, per-head attention heatmaps for a prompt and a checkpoint.

    python -m experiments.attention_maps --checkpoint=tests/golden/tiny-gpt2 \
        --prompt="To be, or not to be" --outdir=/tmp/maps
"""

import numpy as np
from absl import app, flags

from experiments import cli
from gptjax import GPT, Tokenizer
from gptjax.model.inspect import attention_weights
from gptjax.plots import attention_heatmaps

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "A Hugging Face GPT-2 folder or a gptjax checkpoint.",
                    required=True)
flags.DEFINE_string("prompt", None, "The text whose attention is drawn.", required=True)
flags.DEFINE_string("outdir", "attention_maps", "Where the PNGs go (one per layer).")
flags.DEFINE_list("layers", None, "Only these layers (default: all).")


def main(argv):
    del argv
    model = GPT.from_pretrained(FLAGS.checkpoint)
    tokenizer = Tokenizer.from_pretrained(FLAGS.checkpoint)
    ids = tokenizer.encode(FLAGS.prompt)
    if not ids:
        raise app.UsageError("--prompt encodes to no tokens; give some text")
    layers = list(range(model.cfg.num_layers))
    if FLAGS.layers:
        if not all(i.isdigit() and int(i) in layers for i in FLAGS.layers):
            raise app.UsageError(f"--layers={','.join(FLAGS.layers)}: this model's layers are "
                                 f"0..{layers[-1]}")
        layers = [int(i) for i in FLAGS.layers]
    if len(ids) > model.cfg.max_len:
        raise app.UsageError(f"--prompt is {len(ids)} tokens, longer than the model's context "
                             f"of {model.cfg.max_len}; shorten it")
    weights = np.asarray(attention_weights(model, [ids]))[layers, 0]  # [layers, heads, seq, seq]
    labels = [tokenizer.decode([i]) for i in ids]
    for path in attention_heatmaps(weights, labels, FLAGS.outdir, layers=layers):
        print(path)


if __name__ == "__main__":
    cli.run(main)
