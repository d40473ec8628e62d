r"""Per-layer, per-head attention heatmaps for a prompt and a checkpoint.

    python -m experiments.attention_maps --checkpoint=tests/golden/tiny-gpt2 \
        --prompt="To be, or not to be" --outdir=/tmp/maps
"""

from absl import app, flags

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
    weights = attention_weights(model, [ids])[:, 0]  # [layers, heads, seq, seq]
    if FLAGS.layers:
        weights = weights[[int(i) for i in FLAGS.layers]]
    labels = [tokenizer.decode([i]) for i in ids]
    for path in attention_heatmaps(weights, labels, FLAGS.outdir):
        print(path)


if __name__ == "__main__":
    app.run(main)
