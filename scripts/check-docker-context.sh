#!/usr/bin/env bash
# Checks, without a Docker engine, that the build stage of docker/Dockerfile gets everything
# cargo needs from the build context.
#
# It reads the Dockerfile's COPY (and ADD) lines and the .dockerignore, and assembles the
# build stage's files (the stage before the second FROM) the way `docker build` would, into
# target/docker-context/ (that folder is the stage's filesystem root: WORKDIR /src is
# target/docker-context/src). Then it runs, in the stage's WORKDIR,
#   cargo check --locked --offline --bin contextd
# with CARGO_TARGET_DIR=target/docker-context-target (kept, so later runs are quick). That
# fails like the image build would on a manifest cargo refuses (a declared bench or test whose
# file was not copied) or a file the code includes (include_str!) that is not there.
# The COPY sources of the later stages (those not --from another stage) must be in the
# context too, or the build would stop there; they are checked but not assembled.
#
# Usage: scripts/check-docker-context.sh [DOCKERFILE]   (default docker/Dockerfile)
# The context is the repository root, as in docker/compose.yaml and the Dockerfile's header.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
DOCKERFILE=${1:-docker/Dockerfile}
OUT=$ROOT/target/docker-context
CARGO_TARGET_DIR=${DOCKER_CONTEXT_TARGET_DIR:-$ROOT/target/docker-context-target}

die() { echo "check-docker-context: $*" >&2; exit 1; }
[[ -f $DOCKERFILE ]] || die "no Dockerfile at $DOCKERFILE"

# ---- .dockerignore, with Docker's rules (moby/patternmatcher) ----------------------------
# BuildKit prefers <Dockerfile>.dockerignore next to the Dockerfile over the context's own.
IGNORE_FILE=.dockerignore
[[ -f $DOCKERFILE.dockerignore ]] && IGNORE_FILE=$DOCKERFILE.dockerignore
PATTERNS=() NEGATED=()

# pattern_regex PATTERN: Docker's translation of an ignore pattern to an anchored regex.
pattern_regex() {
  local p=$1 re="" i=0 c
  while ((i < ${#p})); do
    c=${p:i:1}
    if [[ $c == '*' ]]; then
      if [[ ${p:i+1:1} == '*' ]]; then
        ((i += 1))
        [[ ${p:i+1:1} == / ]] && ((i += 1))   # "**/" is "**"
        if ((i + 1 >= ${#p})); then re+='.*'; else re+='(.*/)?'; fi
      else
        re+='[^/]*'
      fi
    elif [[ $c == '?' ]]; then re+='[^/]'
    elif [[ $c == "\\" ]]; then ((i += 1)); re+="\\${p:i:1}"
    elif [[ $c == [.+\(\)\|\{\}\$^] ]]; then re+="\\$c"
    else re+=$c
    fi
    ((i += 1))
  done
  printf '^%s$' "$re"
}

if [[ -f $IGNORE_FILE ]]; then
  while IFS= read -r line || [[ -n $line ]]; do
    line=${line%$'\r'}
    [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
    line=$(sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//' <<<"$line")
    neg=0
    if [[ $line == '!'* ]]; then neg=1; line=${line:1}; fi
    # filepath.Clean, then a leading "/" means the context root, like no "/".
    line=$(realpath -m --relative-to=/ "/$line" 2>/dev/null) || die "bad pattern in $IGNORE_FILE: $line"
    PATTERNS+=("$(pattern_regex "$line")") NEGATED+=("$neg")
  done <"$IGNORE_FILE"
fi

# ignored PATH: whether the context leaves PATH (relative to the root) out: the last pattern
# matching it or one of its parent folders decides.
ignored() {
  local path=$1 verdict=1 k prefix part
  local -a parts
  IFS=/ read -ra parts <<<"$path"
  for k in "${!PATTERNS[@]}"; do
    prefix=""
    for part in "${parts[@]}"; do
      prefix=${prefix:+$prefix/}$part
      if [[ $prefix =~ ${PATTERNS[k]} ]]; then
        if [[ ${NEGATED[k]} == 1 ]]; then verdict=1; else verdict=0; fi
        break
      fi
    done
  done
  return "$verdict"
}

# ---- the Dockerfile's instructions, one a line ------------------------------------------
# Joins continuation lines and drops comments (also those inside a continued instruction).
instructions() {
  local line acc=""
  while IFS= read -r line || [[ -n $line ]]; do
    line=${line%$'\r'}
    [[ $line =~ ^[[:space:]]*# ]] && continue
    if [[ $line =~ ^(.*)\\[[:space:]]*$ ]]; then acc+="${BASH_REMATCH[1]} "; continue; fi
    acc+=$line
    [[ $acc =~ ^[[:space:]]*$ ]] || printf '%s\n' "$acc"
    acc=""
  done <"$DOCKERFILE"
  [[ -z $acc ]] || printf '%s\n' "$acc"
}

# ---- copying as COPY does ------------------------------------------------------------------
# walk DIR: the files under DIR (relative to the root) that the context keeps, NUL-separated.
# Like Docker, it skips an ignored folder unless an exception ("!") pattern could re-include
# something in it.
walk() {
  local dir=$1 entry
  local -a entries
  shopt -s dotglob nullglob
  if [[ $dir == . ]]; then entries=(*); else entries=("$dir"/*); fi
  shopt -u dotglob nullglob
  for entry in "${entries[@]}"; do
    if [[ -d $entry && ! -L $entry ]]; then
      if ignored "$entry" && [[ " ${NEGATED[*]:-} " != *" 1 "* ]]; then continue; fi
      walk "$entry"
    elif ! ignored "$entry"; then
      printf '%s\0' "$entry"
    fi
  done
}

# copy_source SRC DEST_ROOT DEST DEST_IS_DIR: SRC (relative to the context root, already
# glob-expanded) to DEST (absolute, in the image) under DEST_ROOT; DEST_ROOT "" only checks.
copy_source() {
  local src=$1 root=$2 dest=$3 dest_is_dir=$4 rel target n=0
  src=$(realpath -m --relative-to="$ROOT" "$ROOT/$src")
  [[ $src != ..* ]] || die "COPY source '$1' is outside the build context"
  [[ -e $src || -L $src ]] || die "COPY $1: no such file in the build context (the image build fails here too)"
  if [[ -d $src && ! -L $src ]]; then
    # A folder: its contents go into DEST, minus what .dockerignore leaves out.
    while IFS= read -r -d '' rel; do
      n=$((n + 1))
      [[ -z $root ]] && continue
      if [[ $src == . ]]; then target=$root$dest/$rel; else target=$root$dest/${rel#"$src"/}; fi
      mkdir -p "$(dirname "$target")"
      cp -P -p "$rel" "$target"
    done < <(walk "$src")
    if ((n == 0)) && ignored "$src"; then
      die "COPY $1: .dockerignore ($IGNORE_FILE) leaves it out of the build context"
    fi
    [[ -z $root ]] || mkdir -p "$root$dest"
  else
    ignored "$src" && die "COPY $1: .dockerignore ($IGNORE_FILE) leaves it out of the build context"
    [[ -z $root ]] && return 0
    target=$root$dest
    if [[ $dest_is_dir == 1 || -d $target ]]; then target=$target/$(basename "$src"); fi
    mkdir -p "$(dirname "$target")"
    cp -P -p "$src" "$target"
  fi
}

# copy_instruction ARGS DEST_ROOT WORKDIR: one COPY/ADD line (its arguments), into DEST_ROOT.
copy_instruction() {
  local args=$1 root=$2 workdir=$3 word dest dest_is_dir=0 src one
  local -a words=() flags=() srcs=() expanded=()
  if [[ $args =~ ^[[:space:]]*((--[^[:space:]]+[[:space:]]+)*)\[ ]]; then
    # JSON (exec) form: flags, then ["src", ..., "dest"].
    read -ra flags <<<"${BASH_REMATCH[1]}"
    mapfile -t words < <(jq -r '.[]' <<<"${args#"${BASH_REMATCH[1]}"}") ||
      die "cannot parse: COPY $args"
    words=("${flags[@]}" "${words[@]}")
  else
    [[ $args != *'<<'* ]] || die "COPY with a here-document is not supported by this check: COPY $args"
    set -f; read -ra words <<<"$args"; set +f
  fi
  for word in "${words[@]}"; do
    case $word in
      --from=*) return 0 ;;   # from another stage or image, not from the context
      --chown=* | --chmod=* | --link | --link=*) ;;
      --*) die "COPY flag $word is not supported by this check" ;;
      *) srcs+=("$word") ;;
    esac
  done
  ((${#srcs[@]} >= 2)) || die "COPY needs a source and a destination: COPY $args"
  dest=${srcs[-1]}; unset 'srcs[-1]'
  [[ $dest != *'$'* && "${srcs[*]}" != *'$'* ]] ||
    die "COPY with variables is not supported by this check: COPY $args"
  [[ $dest == */ || $dest == . || $dest == */. || ${#srcs[@]} -gt 1 ]] && dest_is_dir=1
  [[ $dest == /* ]] || dest=$workdir/$dest
  dest=$(realpath -m "/$dest")
  for src in "${srcs[@]}"; do
    [[ $src != http://* && $src != https://* && $src != git@* ]] || continue   # ADD of a URL
    if [[ $src == *[\*\?\[]* ]]; then
      mapfile -t expanded < <(compgen -G "$src" || true)
      ((${#expanded[@]} > 0)) || die "COPY $src: no file in the build context matches"
      ((${#expanded[@]} == 1)) || dest_is_dir=1
    else
      expanded=("$src")
    fi
    for one in "${expanded[@]}"; do copy_source "$one" "$root" "$dest" "$dest_is_dir"; done
  done
}

# ---- assemble the build stage, check the others -------------------------------------------
rm -rf "$OUT"
mkdir -p "$OUT"
stage=0 workdir=/ build_workdir="" bin=contextd copies=0
while IFS= read -r line; do
  [[ $line =~ ^[[:space:]]*([A-Za-z]+)[[:space:]]*(.*)$ ]] || continue
  keyword=${BASH_REMATCH[1]^^} args=${BASH_REMATCH[2]}
  case $keyword in
    FROM) stage=$((stage + 1)); workdir=/ ;;
    WORKDIR)
      [[ $args != *'$'* ]] || die "WORKDIR with variables is not supported by this check"
      [[ $args == /* ]] || args=$workdir/$args
      workdir=$(realpath -m "$args")
      ((stage == 1)) && build_workdir=$workdir ;;
    COPY | ADD)
      if ((stage == 1)); then
        copy_instruction "$args" "$OUT" "$workdir"; copies=$((copies + 1))
      else
        copy_instruction "$args" "" "$workdir"
      fi ;;
    RUN)
      if ((stage == 1)) && [[ $args == *'cargo build'* ]]; then
        build_workdir=$workdir
        [[ $args =~ --bin[[:space:]=]+([A-Za-z0-9_-]+) ]] && bin=${BASH_REMATCH[1]}
      fi ;;
  esac
done < <(instructions)
((stage >= 1)) || die "$DOCKERFILE has no FROM"
((copies > 0)) || die "the build stage of $DOCKERFILE copies nothing from the context"
build_dir=$OUT${build_workdir:-/}
echo "check-docker-context: build stage of $DOCKERFILE assembled in ${build_dir#"$ROOT"/} ($(find "$OUT" -type f | wc -l) files; ignore file: $IGNORE_FILE)"

[[ -f $build_dir/Cargo.toml ]] || die "no Cargo.toml in the build stage's WORKDIR ${build_workdir:-/}"
echo "==> cargo check --locked --offline --bin $bin  (in ${build_dir#"$ROOT"/}, CARGO_TARGET_DIR=${CARGO_TARGET_DIR#"$ROOT"/})"
if ! (cd "$build_dir" && CARGO_TARGET_DIR=$CARGO_TARGET_DIR cargo check --locked --offline --quiet --bin "$bin"); then
  die "cargo cannot build $bin from the context $DOCKERFILE gives its build stage (see above)"
fi
echo "check-docker-context: ok"
