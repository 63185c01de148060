# A model of what the l3lb module uses of nixpkgs' `utils` module argument (nixos/lib/utils.nix, reached
# through nixos/modules/misc/extra-arguments.nix): escapeSystemdExecArg(s), which writes each argument as a
# JSON string and then doubles every % and $, so that systemd expands no specifier and no variable in it.
{
  escapeSystemdExecArgs = args: builtins.concatStringsSep " "
    (map (a: builtins.replaceStrings [ "%" "$" ] [ "%%" "$$" ] (builtins.toJSON (toString a))) args);
}
