"""Shell completion: `trustd --install-completion` and `--show-completion` (typer's), for
bash and zsh, with zsh's script made to complete on the first Tab.

typer's zsh script, installed as `~/.zfunc/_trustd`, only defines the completion function
and registers it when zsh autoloads the file on the first Tab, so that Tab completes
nothing. This one tells the two ways the script is read apart (as click's own zsh script
does): run by the completion system (`compstate` is set in a completion widget, zshcompwid
"Completion Special Parameters") it completes at once; sourced or eval'd
(`eval "$(trustd --show-completion)"`) it registers the function for later."""

from __future__ import annotations

from typer import _completion_shared

ZSH_SCRIPT = """\
#compdef %(prog_name)s

%(complete_func)s() {
  eval $(env _TYPER_COMPLETE_ARGS="${words[1,$CURRENT]}" %(autocomplete_var)s=complete_zsh \
%(prog_name)s)
}

if (( ${+compstate} )); then
  # Called by the completion system (this file autoloaded from fpath as _%(prog_name)s):
  # complete now, on the first Tab as on the next.
  %(complete_func)s "$@"
else
  # Sourced or eval'd: register for the Tabs to come.
  compdef %(complete_func)s %(prog_name)s
fi
"""


def use_zsh_script() -> None:
    """Make `--install-completion` and `--show-completion` write `ZSH_SCRIPT` for zsh."""
    _completion_shared._completion_scripts["zsh"] = ZSH_SCRIPT
