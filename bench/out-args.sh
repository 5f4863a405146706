# Sourced by the bench scripts that feed bench.py: `. bench/out-args.sh "$@"; set -- "${REST[@]}"`.
# Takes leading `--json FILE` / `--md FILE` (made absolute against the caller's directory, so
# parse before any cd) into JSON and MD; the remaining arguments are left in REST.
JSON= MD=
while [ $# -gt 0 ]; do
    case $1 in
        --json) JSON=$(realpath -m "$2"); shift 2 ;;
        --md) MD=$(realpath -m "$2"); shift 2 ;;
        *) break ;;
    esac
done
REST=("$@")
