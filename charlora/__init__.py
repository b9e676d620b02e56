"""charlora: turn dialogue into a LoRA adapter that talks like one character.

The data's journey, one module per stage:
  dialogue.py  read a `Name:line` file into speaker/line records; decode any file's bytes
  readers/     every source format (scripts, plays, chat exports) into the same records
  prompt.py    the one place the `Name:line` prompt is built (training, evaluation, chat)
  samples.py   records -> context-window samples ({"output", "input"})
  exports.py   the same samples in other trainers' shapes (OpenAI messages, ShareGPT)
  tokens.py    samples -> input_ids / labels / attention_mask
  models.py    find and load a base model (dtype, quantization, load_for_inference)
  train.py     the training run that writes loras/<name>, stage by stage
  train_config.py  TrainConfig and check_train_config: every training flag and range check
  train_data.py    held-out tail, other speakers' lines, tokenizing, collators
  objective.py     the weighted reply-only loss and the Trainer that uses it
  keeper.py        held-out score after each epoch, best adapter kept, early stop
  run_folder.py    where a run reads and writes; the adapter folder written whole
  adapter.py   the card, loss curve, webui character file and merge beside it
  evaluate.py  held-out metrics: reply loss, clean endings, speaking for others
  reply.py     the one reply generator: stop rules, speaker rule, EOS cut, streaming, sampling
  chat.py      the conversation (ChatSession) and the terminal loop
  server.py    the OpenAI-compatible HTTP server (serve.py); openai_api.py its wire format,
               server_engine.py its generation thread and per-user memory
  config.py    ChatConfig / EvalConfig and check_config: every default and range check
  cli.py       the scripts' shared loading flags and error/exit handling
  pcw.py       Parallel Context Windows: more context than the window (layout, mask, decoding)
"""
