"""The ``jupyter-sessionpool`` command (``jupyter sessionpool`` too): a thin face of the Python API.

``jupyter-sessionpool run NOTEBOOK_OR_DIR...`` is :func:`~jupyter_sessionpool.batch.run_notebooks`
with a live display (rich) on a terminal, plain lines otherwise, a summary table and an exit
status: 0 all passed, 1 any failed, 2 bad usage, 130 interrupted (Ctrl-C).

``jupyter-sessionpool kernelspec install --name NAME`` is
:func:`~jupyter_sessionpool.forking.kernelspec.install_kernelspec`: a kernelspec whose kernels
are forked by the ``sessionpool-fork`` provisioner. Exit status 0, 1 if it cannot be written, 2 bad usage.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from ._version import __version__

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# Terminal escape sequences: CSI (colours, cursor moves), OSC (titles, links), character-set
# selection (tput sgr0's ESC ( B) and the other two-character ones.
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[()*+][0-9A-Za-z]|[@-Z\\-_])")
# What XML 1.0 cannot carry: C0 controls but tab, LF and CR; lone surrogates; U+FFFE and U+FFFF.
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (and exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _jobs(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jupyter-sessionpool", description="A pool of real Jupyter kernels handed out by session.")
    parser.add_argument("--version", action="version", version=f"jupyter-sessionpool {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    run = commands.add_parser(
        "run",
        help="run notebooks at once, each on a fresh prewarmed kernel of its own",
        description="Run notebooks N at a time, each on a fresh prewarmed kernel of its own, in its own "
        "directory, with parameters injected the papermill way. Exit status: 0 all passed, 1 any failed, "
        "2 bad usage, 130 interrupted.",
    )
    run.add_argument("paths", nargs="+", metavar="NOTEBOOK_OR_DIR", help="notebooks, or directories searched for *.ipynb")
    run.add_argument("-j", "--jobs", type=_jobs, default=None, metavar="N", help="notebooks at a time (default: the cores)")
    out = run.add_mutually_exclusive_group()
    out.add_argument("-o", "--output-dir", metavar="OUT_DIR", help="write executed notebooks here (default: not written)")
    out.add_argument("--inplace", action="store_true", help="write executed notebooks over their inputs")
    # Parameters as papermill's command line takes them, merged in its order: -b, -f, -y, -p, -r (later wins).
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="a parameter, typed by papermill's rules (True/False/None, an int, a float, else the "
                     "string as given); repeatable")
    run.add_argument("-r", "--raw-parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="a parameter taken as a string, whatever it looks like; repeatable")
    run.add_argument("-f", "--parameters-file", action="append", default=[], metavar="PARAMS.yaml",
                     help="parameters from a YAML file holding a mapping; repeatable")
    run.add_argument("-y", "--parameters-yaml", action="append", default=[], metavar="YAML",
                     help="parameters from a YAML mapping given as a string; repeatable")
    run.add_argument("-b", "--parameters-base64", action="append", default=[], metavar="BASE64",
                     help="parameters from a base64-encoded YAML mapping; repeatable")
    run.add_argument("--timeout", type=_positive_float, metavar="S", help="seconds a whole notebook may run")
    run.add_argument("--cell-timeout", type=_positive_float, metavar="S", help="seconds one cell may run")
    run.add_argument("--kernel", metavar="NAME", help="kernelspec for every notebook (default: each notebook's own)")
    run.add_argument("--junit-xml", metavar="FILE", help="write a JUnit XML report (one test case per notebook)")
    run.add_argument("--gateway-url", metavar="URL", help="run the kernels on a Jupyter (Enterprise) Kernel Gateway")
    run.add_argument("--fail-fast", action="store_true", help="stop everything at the first failing notebook")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress and no summary; failures only")
    kernelspec = commands.add_parser("kernelspec", help="install a kernelspec whose kernels start by fork")
    kernelspec_commands = kernelspec.add_subparsers(dest="kernelspec_command", metavar="COMMAND", parser_class=_Parser)
    kernelspec.set_defaults(kernelspec_help=kernelspec.print_help)
    install = kernelspec_commands.add_parser(
        "install",
        help="install a kernelspec of this Python whose kernels are forked from a warmed template",
        description="Install a kernelspec of this Python whose kernels the sessionpool-fork provisioner "
        "starts by forking a warmed template (tens of milliseconds), in JupyterLab, Notebook 7, nbclient, "
        "papermill and nbconvert alike. Exit status: 0 installed, 1 not writable, 2 bad usage.",
    )
    install.add_argument("--name", required=True, help="the kernelspec's name, e.g. python3-fast")
    install.add_argument("--display-name", metavar="D", help="the name front ends show (default: NAME)")
    install.add_argument("--preload", type=_modules, default=[], metavar="a,b",
                         help="modules the template imports once, e.g. numpy,pandas")
    where = install.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for this user only")
    where.add_argument("--sys-prefix", action="store_true", help=f"install into this Python's prefix ({sys.prefix})")
    _service_options(commands.add_parser(
        "serve",
        help="serve sessions over HTTP and MCP: a Jupyter Server with only this package's extension",
        description="Start a Jupyter Server with only jupyter_sessionpool's extension: the sessions API at "
        "/sessionpool/api/sessions and MCP at /sessionpool/mcp. Any other setting: --Class.trait=value "
        "(--AsyncKernelPool.startup_timeout=30, --SessionPoolApp.idle_timeout=600, --ServerApp.certfile=...).",
    ), serve=True)
    _service_options(commands.add_parser(
        "mcp",
        help="an MCP server on stdio (for agents), on a pool of its own",
        description="Serve MCP over stdin/stdout: execute_code, list_sessions, interrupt_session, "
        "restart_session, release_session, upload_file, download_file. Needs the 'mcp' extra. Any other pool "
        "setting: --AsyncKernelPool.name=value (or --KernelPool.name=value).",
    ), serve=False)
    return parser


def _service_options(parser: argparse.ArgumentParser, serve: bool) -> None:
    """The options of `serve` (defaults: its own) and `mcp` (defaults: the pool's, min_idle 1)."""
    if serve:
        parser.add_argument("--port", type=int, metavar="N", help="port to listen on (default 8900)")
        parser.add_argument("--ip", metavar="ADDRESS", help="address to listen on (default 127.0.0.1)")
        parser.add_argument("--token", metavar="T", help="the token clients send (default: a random one, printed)")
    parser.add_argument("--max-kernels", type=_jobs, metavar="N", help=f"most kernels at once (default {8 if serve else 4}, the pool's)")
    parser.add_argument("--min-idle", type=int, metavar="N", help=f"kernels kept prewarmed (default {2 if serve else 1})")
    parser.add_argument("--gateway-url", metavar="URL", help="run the kernels on a Jupyter (Enterprise) Kernel Gateway")
    parser.add_argument("--root-dir", metavar="DIR",
                        help="directory of the sessions' working directories (default: a temporary one)")
    if not serve:
        parser.add_argument("--kernel", metavar="NAME", help="kernelspec of the sessions (default python3)")
        parser.add_argument("--timeout", type=_positive_float, metavar="S",
                            help="default seconds a cell may run before it is interrupted (default: no limit)")


def _modules(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    bad = [n for n in names if not all(part.isidentifier() for part in n.split("."))]
    if bad:
        raise argparse.ArgumentTypeError(f"not module names: {', '.join(bad)}")
    return names


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)  # `serve` passes --Class.trait=value settings on
        if extra and args.command not in ("serve", "mcp"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # --help, --version, usage errors
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    if args.command == "serve":
        from .server.app import serve

        return serve(args, extra)
    if args.command == "mcp":
        return _mcp(args, extra)
    if args.command == "kernelspec":
        return _kernelspec(args)
    return _run(args)


def _mcp(args: argparse.Namespace, extra: list[str]) -> int:
    import asyncio

    from traitlets.config import Config
    from traitlets.config.loader import KVArgParseConfigLoader

    bad = [arg for arg in extra if not (arg.startswith("--") and "." in arg.split("=", 1)[0])]
    if bad:
        print(f"jupyter-sessionpool mcp: error: unrecognised argument(s) {' '.join(bad)}; pool settings are given "
              "as --AsyncKernelPool.name=value", file=sys.stderr)
        return EXIT_USAGE
    try:
        from .server.mcp import require_sdk, run_stdio
        from .server.service import SessionService, pool_config

        require_sdk()
    except ImportError as exc:
        print(f"jupyter-sessionpool mcp: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    config = Config()
    config.AsyncKernelPool.min_idle = 1  # an agent's first call should not wait for a kernel to start
    config.merge(pool_config(KVArgParseConfigLoader(argv=extra).load_config()))
    options: dict[str, Any] = {"config": config}
    for name, value in (("max_kernels", args.max_kernels), ("min_idle", args.min_idle), ("gateway_url", args.gateway_url),
                        ("kernel_name", args.kernel), ("execution_timeout", args.timeout)):  # fmt: skip
        if value is not None:
            options[name] = value
    try:
        service = SessionService(options, root_dir=args.root_dir)
    except (TypeError, ValueError) as exc:
        print(f"jupyter-sessionpool mcp: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        asyncio.run(run_stdio(service))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return EXIT_OK


def _kernelspec(args: argparse.Namespace) -> int:
    from .forking.kernelspec import install_kernelspec

    if args.kernelspec_command is None:
        args.kernelspec_help()
        return EXIT_USAGE
    prefix = sys.prefix if args.sys_prefix else None
    try:
        where = install_kernelspec(args.name, args.display_name, args.preload, user=args.user, prefix=prefix)
    except ValueError as exc:
        print(f"jupyter-sessionpool kernelspec install: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        hint = " (try --user or --sys-prefix)" if isinstance(exc, PermissionError) else ""
        print(f"jupyter-sessionpool kernelspec install: error: {exc}{hint}", file=sys.stderr)
        return EXIT_FAILED
    print(f"Installed kernelspec {args.name} in {where} (kernels start by fork: sessionpool-fork)")
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    # nbformat validates with jsonschema, whose import builds rfc3987_syntax's IRI grammar when
    # it is installed: 0.75 s, most of this command's own start. nbformat's schemas check no
    # IRI format, so this process does without it (jsonschema skips formats it cannot import).
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]
    from .batch import UsageError, check_output_file, collect_parameters, run_notebooks

    display = _Display(quiet=args.quiet)
    try:
        parameters = collect_parameters(base64_yaml=args.parameters_base64, files=args.parameters_file,
                                        yaml_text=args.parameters_yaml, values=args.parameter, raw=args.raw_parameter)
        if args.junit_xml:
            check_output_file(args.junit_xml, "--junit-xml")
        results = run_notebooks(
            args.paths,
            jobs=args.jobs,
            output_dir=args.output_dir,
            inplace=args.inplace,
            parameters=parameters,
            timeout=args.timeout,
            cell_timeout=args.cell_timeout,
            kernel_name=args.kernel,
            gateway_url=args.gateway_url,
            fail_fast=args.fail_fast,
            progress=display.update,
        )
    except UsageError as exc:
        display.close()
        print(f"jupyter-sessionpool run: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        display.close()
        results = display.finished
        print(f"interrupted: {len(results)} notebook(s) stopped; partial outputs written", file=sys.stderr)
        status = EXIT_INTERRUPTED
    else:
        display.close()
        status = EXIT_OK if all(r.ok for r in results) else EXIT_FAILED
    display.summary(results)
    if args.junit_xml:
        try:
            write_junit(results, args.junit_xml)
        except OSError as exc:  # checked before the run; the disk may have filled up since
            print(f"jupyter-sessionpool run: cannot write the JUnit report {args.junit_xml!r}: {exc.strerror or exc}",
                  file=sys.stderr)
            status = status or EXIT_FAILED
    if args.output_dir is None and not args.inplace and not args.quiet:
        print("(executed notebooks were not written; pass -o OUT_DIR to keep them)", file=sys.stderr)
    return status


class _Display:
    """Progress: a rich live view on a terminal (a line per running notebook, an overall bar), plain lines otherwise."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.finished: list[Any] = []
        self.tty = sys.stdout.isatty() and not quiet
        self._live: Any = None
        self._tasks: dict[Path, Any] = {}
        self._queued = 0
        self._started = time.monotonic()

    def _progress(self) -> Any:
        if self._live is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._live = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                  MofNCompleteColumn(), TimeElapsedColumn())
            self._overall = self._live.add_task("[bold]all notebooks", total=None)
            self._live.start()
        return self._live

    def update(self, event: str, result: Any) -> None:
        if event == "done":
            self.finished.append(result)
        if self.quiet:
            if event == "done" and not result.ok:
                print(f"{result.status.upper()} {_shown(result.path)}: {result.error}", file=sys.stderr)
            return
        if not self.tty:
            if event == "done":
                print(_line(result), flush=True)
            return
        progress = self._progress()
        if event == "queued":
            self._queued += 1
            progress.update(self._overall, total=self._queued)
        elif event == "start":
            self._tasks[result.path] = progress.add_task(result.name, total=result.cells_total or None)
        elif event == "cell" and result.path in self._tasks:
            progress.update(self._tasks[result.path], completed=result.cells)
        elif event == "done":
            task = self._tasks.pop(result.path, None)
            if task is not None:
                progress.remove_task(task)
            progress.update(self._overall, advance=1)
            progress.console.print(_line(result), markup=False, highlight=False)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def summary(self, results: list[Any]) -> None:
        if self.quiet or not results:
            return
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        table = Table(title=f"{sum(r.ok for r in results)}/{len(results)} passed in {time.monotonic() - self._started:.1f} s")
        for column in ("notebook", "status", "cells", "seconds", "error"):
            table.add_column(column, justify="right" if column in ("cells", "seconds") else "left")
        for r in results:
            style = "green" if r.ok else "yellow" if r.status == "skipped" else "red"
            table.add_row(escape(_shown(r.path)), f"[{style}]{r.status}[/]", f"{r.cells}/{r.cells_total}",
                          f"{r.duration:.2f}", escape(r.error or ""))
        Console(width=None if self.tty else 160).print(table)


def _shown(path: Path) -> str:
    """A notebook's path as the user would type it: relative to here when it is below here, and
    printable (a byte of the file name that is not UTF-8 shown as ``\\udcff``, not a crash)."""
    try:
        path = path.relative_to(Path.cwd())
    except ValueError:
        pass
    return str(path).encode("utf-8", "backslashreplace").decode("utf-8")


def _line(result: Any) -> str:
    tail = f"  {result.error}" if result.error else ""
    return f"{result.status.upper():<11} {_shown(result.path)}  {result.cells}/{result.cells_total} cells  {result.duration:.2f} s{tail}"


def _xml_text(text: str) -> str:
    """``text`` as XML 1.0 can carry it: terminal escape sequences (colours, ``tput sgr0``'s
    ``ESC ( B``) removed, and every other character XML 1.0 cannot hold (control characters
    such as a progress bar's backspaces, NUL, lone surrogates) written as its Python escape
    (``\\x08``), so nothing is silently lost."""
    return _XML_ILLEGAL.sub(lambda m: m.group().encode("unicode_escape", "backslashreplace").decode("ascii"),
                            _ANSI.sub("", text))


def write_junit(results: list[Any], path: str) -> None:
    """A JUnit XML report: one ``testcase`` per notebook, failures with the cell's traceback.

    ``failed`` notebooks are failures, ``skipped`` ones skipped, any other that did not pass
    (timed out, died, interrupted...) an error. Whatever the tracebacks and messages hold,
    the file is well-formed XML.
    """
    suite = ET.Element("testsuite", name="jupyter-sessionpool", tests=str(len(results)),
                       failures=str(sum(r.status == "failed" for r in results)),
                       errors=str(sum(r.status not in ("passed", "failed", "skipped") for r in results)),
                       skipped=str(sum(r.status == "skipped" for r in results)),
                       time=f"{sum(r.duration for r in results):.3f}")
    for r in results:
        case = ET.SubElement(suite, "testcase", classname=_xml_text(str(r.path.parent)), name=_xml_text(r.path.name),
                             time=f"{r.duration:.3f}")
        if r.status == "skipped":
            ET.SubElement(case, "skipped", message="not run: the run stopped first")
        elif not r.ok:
            tag = "failure" if r.status == "failed" else "error"
            node = ET.SubElement(case, tag, message=_xml_text(r.error or r.status), type=r.status)
            node.text = _xml_text("\n".join(r.traceback))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)
