#!/usr/bin/env bash
# Builds the release binaries of both planes into dist/ (or $DIST_DIR): `cargo build --release`,
# stripped, with SHA256SUMS, a BUILD-INFO line (version, commit, the newest glibc symbol version
# the binaries need) and a source tarball that builds without .git (its COMMIT file names the
# commit for `--version`).
#
#   deploy/build-release.sh            # → dist/gatehouse-cp, dist/gatehouse-dp, SHA256SUMS, ...
#
# The binaries are linked against glibc (no musl target is assumed): they run on any x86-64
# Linux whose glibc is at least the version printed at the end (README, "Deploy").
set -euo pipefail
cd "$(dirname "$0")/.."

dist=${DIST_DIR:-dist}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
if [ -z "${GATEHOUSE_GIT_COMMIT:-}" ]; then
    if commit=$(git rev-parse --short=12 HEAD 2>/dev/null); then
        if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
            commit="$commit-dirty"
        fi
    elif [ -s COMMIT ]; then
        commit=$(cat COMMIT)
    else
        commit=unknown
    fi
    export GATEHOUSE_GIT_COMMIT=$commit
fi

cargo build --release --locked -p gatehouse-cp -p gatehouse-dp --bins
target=$(cargo metadata --no-deps --format-version 1 |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')

mkdir -p "$dist"
for bin in gatehouse-cp gatehouse-dp; do
    install -m 0755 "$target/release/$bin" "$dist/$bin"
    strip --strip-all "$dist/$bin"
done

# The newest glibc symbol version either binary needs: the oldest glibc it runs on.
glibc=$(objdump -T "$dist/gatehouse-cp" "$dist/gatehouse-dp" | grep -o 'GLIBC_[0-9][0-9.]*' |
    sort -u -V | tail -n1)

if git rev-parse --git-dir >/dev/null 2>&1; then
    git archive --format=tar.gz --prefix="gatehouse-$version/" \
        --add-virtual-file="gatehouse-$version/COMMIT:$GATEHOUSE_GIT_COMMIT" \
        -o "$dist/gatehouse-$version-src.tar.gz" HEAD
fi

printf 'gatehouse %s commit %s x86_64-linux-gnu needs %s or newer\n' \
    "$version" "$GATEHOUSE_GIT_COMMIT" "${glibc:-GLIBC_unknown}" >"$dist/BUILD-INFO"
(cd "$dist" && sha256sum gatehouse-cp gatehouse-dp ./*.tar.gz 2>/dev/null >SHA256SUMS || true)
(cd "$dist" && sha256sum -c --quiet SHA256SUMS)
cat "$dist/BUILD-INFO"
"$dist/gatehouse-cp" --version
"$dist/gatehouse-dp" --version
ls -l "$dist"
