r"""Talk with a GPT fine-tuned on dialogue (data.task='dialogue'), one line per turn.

    python -m experiments.chat --checkpoint=/tmp/gpt2-chat --system="You are helpful."

--checkpoint is a gptjax run's workdir or a Hugging Face GPT-2 folder. Type a message and press
Enter; /reset starts a new conversation, /quit (or Ctrl-D) ends. The model sees the transcript
it was fine-tuned on ("User: ...", "Assistant: ..."), keeping the newest turns that fit its
context. Replies are sampled (temperature 0.8, top_p 0.95) unless the flags say otherwise.
"""

from absl import app, flags

from experiments import cli
from gptjax import GPT, Tokenizer
from gptjax.generation import GenerationError
from gptjax.generation.chat import Chat

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "A gptjax run's workdir or a Hugging Face GPT-2 folder.",
                    required=True)
flags.DEFINE_string("tokenizer", None, "Tokenizer folder (default: --checkpoint).")
flags.DEFINE_string("system", None, "A system message that opens every conversation.")
flags.DEFINE_integer("max_new_tokens", None, "Longest reply, in tokens (default: 64, or half "
                     "the model's context if that is less).")
flags.DEFINE_bool("do_sample", None, "Sample replies (default) or, with --nodo_sample, greedy.")
flags.DEFINE_float("temperature", None, "Sampling temperature (default 0.8).")
flags.DEFINE_integer("top_k", None, "Sample among the k most likely tokens (default 0: off).")
flags.DEFINE_float("top_p", None, "Nucleus sampling: smallest set holding this probability "
                   "(default 0.95).")
flags.DEFINE_float("repetition_penalty", None, "Penalty > 1 for tokens already in the text.")
flags.DEFINE_integer("seed", None, "Sampling seed (default 0).")

# Shown for an empty reply, which is what a model never fine-tuned on the transcript often
# gives: it ends the 'Assistant:' line at once.
NO_REPLY = ("(no reply: the model ended its turn at once, as a model not fine-tuned on "
            "dialogues (data.task='dialogue') often does)")

OPTIONS = ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "repetition_penalty",
           "seed")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    model = GPT.from_pretrained(FLAGS.checkpoint)
    tokenizer = Tokenizer.from_pretrained(FLAGS.tokenizer or FLAGS.checkpoint)
    options = {k: getattr(FLAGS, k) for k in OPTIONS if getattr(FLAGS, k) is not None}
    try:
        chat = Chat(model, tokenizer, system=FLAGS.system, **options)
    except GenerationError as e:
        raise app.UsageError(str(e)) from None
    print("Chat with the model: /reset starts over, /quit ends.")
    while True:
        try:
            text = input("User: ").strip()
        except EOFError:
            break
        if text == "/quit":
            break
        if text == "/reset":
            chat.reset()
            continue
        if not text:
            continue
        try:
            print(f"Assistant: {chat.reply(text) or NO_REPLY}", flush=True)
        except GenerationError as e:  # e.g. a message longer than the context: say, go on
            print(f"(not sent: {e})", flush=True)


if __name__ == "__main__":
    cli.run(main)
