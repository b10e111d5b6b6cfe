"""Entry point: `python -m prefix_jax.main [train|eval|decode|export|import|export_base] --config=FILE --workdir=DIR [--config.x=y]`,
or `python -m prefix_jax.main serve --config=FILE --prefixes=NAME=PATH,... [--host=H] [--port=P]`.

Kept thin on purpose: flags in, library call out (tests call the same functions).
`train` (the default) resumes from the workdir's latest checkpoint if there is one;
`eval` scores the workdir's best checkpoint on dev; `decode` writes its generations
(greedy, beam search or sampling; `config.decode`) for every dev input; `export
--out=DIR` writes the best checkpoint's prefix as a PEFT adapter; `import
--adapter=DIR` makes a PEFT adapter the best checkpoint of a new workdir; `export_base
--out=DIR` ships a full-training run as a base-model directory (pretrain.py); `serve`
answers OpenAI-style completions for many tasks' prefixes at once (server.py).

Bad input (a flag, a config value, a data file, a checkpoint: `errors.UserError`) ends
the process with its one-line message and exit status 1, and a preempted run
(SIGTERM/SIGINT) with its one line and 128 + the signal number; anything else is a bug
and keeps its traceback.
"""

import ast
import json
import logging as std_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from prefix_jax import errors, interop, loop, preemption, pretrain, server, sharding

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard events and summaries go here.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", "", "host:port of process 0 for a multi-process run; TPU pods and SLURM need none."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Processes in a multi-process run (with --coordinator_address).")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "This process's index (with --coordinator_address).")
_OUT = flags.DEFINE_string("out", None, "export: the PEFT adapter directory; export_base: the base-model directory.")
_ADAPTER = flags.DEFINE_string("adapter", None, "import: the PEFT adapter directory to read.")
_PREFIXES = flags.DEFINE_string("prefixes", "", "serve: the tasks, NAME=PATH,... (PATH: a workdir or a PEFT adapter).")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "serve: the address to listen on.")
_PORT = flags.DEFINE_integer("port", 8000, "serve: the port (0: any free one; the server prints it).")
flags.mark_flags_as_required(["config"])


def _with_flag(function, flag):
    def command(config, workdir):
        if not flag.value:
            raise app.UsageError(f"This command needs --{flag.name}.")
        return function(config, workdir, flag.value)

    return command


COMMANDS = {
    "train": loop.train_and_evaluate,
    "eval": loop.evaluate,
    "decode": loop.decode,
    "export": _with_flag(interop.export_best, _OUT),
    "import": _with_flag(interop.import_adapter, _ADAPTER),
    "export_base": _with_flag(pretrain.export_base, _OUT),
    "serve": lambda config, workdir: server.serve(config, _PREFIXES.value, _HOST.value, _PORT.value),
}


def main(argv):
    if len(argv) > 2 or (len(argv) == 2 and argv[1] not in COMMANDS):
        raise app.UsageError(f"Expected one command out of {sorted(COMMANDS)}, got {argv[1:]}.")
    command = argv[1] if len(argv) == 2 else "train"
    if command != "serve" and not _WORKDIR.value:
        raise app.UsageError(f"{command} needs --workdir.")
    sharding.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    logging.set_verbosity(logging.INFO)
    # Orbax narrates every checkpoint at INFO; keep its warnings, drop the chatter.
    logging.get_absl_handler().addFilter(
        lambda record: record.levelno > std_logging.INFO or "orbax" not in record.pathname
    )
    try:
        result = COMMANDS[command](_CONFIG.value, _WORKDIR.value)
    except errors.UserError as error:
        sys.exit(f"Error: {error}")
    except preemption.Preempted as stop:
        logging.warning("%s", stop)
        sys.exit(128 + stop.signum)
    print(json.dumps(result, indent=2))


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with a mistyped --config.x=y or a config file that raises reported in
    one line (ml_collections raises from inside flag parsing, three chained tracebacks deep)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        sys.exit(f"Error: {error}\nPass --help for the flags.")
    except Exception as error:  # Raised by the config file or ml_collections' override parsing.
        message = str(error)
        if message[:1] in "'\"" and message[-1:] == message[:1]:  # KeyError/AttributeError quote it.
            message = ast.literal_eval(message)
        sys.exit(f"Error in --config or its overrides: {type(error).__name__}: {' '.join(message.split())}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
