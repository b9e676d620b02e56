"""charlora: turn dialogue into a LoRA adapter that talks like one character.

The data's journey, one module per stage:
  dialogue.py  read a `Name:line` file into speaker/line records; decode any file's bytes
  readers/     every source format (scripts, plays, chat exports) into the same records
  prompt.py    the one place the `Name:line` prompt is built (training, evaluation, chat)
  samples.py   records -> context-window samples ({"output", "input"})
  exports.py   the same samples in other trainers' shapes (OpenAI messages, ShareGPT)
  tokens.py    samples -> input_ids / labels / attention_mask
  models.py    find and load a base model (dtype, quantization, LoRA targets)
  train.py     the training run that writes loras/<name>
  adapter.py   the card, loss curve, webui character file and merge beside it
  evaluate.py  held-out metrics: reply loss, clean endings, speaking for others
  generate.py  a greedy reply that stops where the character's line ends
  chat.py      the conversation: history, stop rules, streaming, commands
  pcw.py       Parallel Context Windows: more context than the window (layout, mask, decoding)
"""
