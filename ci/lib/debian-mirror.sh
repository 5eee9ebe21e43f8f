# Sourced by the ci scripts that build Debian roots (ci/build-agent-stemcell,
# ci/director): prints the Debian archive this machine's apt uses.
# shellcheck shell=bash

# The Debian archive this machine's apt uses: the first "deb" source that carries a main
# suite (no -updates or -security), from deb822 .sources files or the one-line format.
debian_mirror() {
	local f
	for f in /etc/apt/sources.list.d/*.sources; do
		[[ -f $f ]] || continue
		awk '
			function flush() {
				if (types ~ /(^| )deb( |$)/ && uris != "" && (" " suites " ") ~ / [a-z]+ /) {
					split(uris, u, " "); print u[1]; found = 1; exit
				}
				types = uris = suites = ""
			}
			/^[ \t]*$/ { flush(); next }
			/^[ \t]*#/ { next }
			tolower($1) == "types:" { $1 = ""; types = $0 }
			tolower($1) == "uris:" { $1 = ""; uris = $0 }
			tolower($1) == "suites:" { $1 = ""; suites = $0 }
			END { if (!found) flush() }
		' "$f"
	done
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[[ -f $f ]] || continue
		awk '
			$1 == "deb" {
				i = 2
				if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
				if ($(i + 1) ~ /^[a-z]+$/) { print $i; exit }
			}
		' "$f"
	done
}
