"""Reports of finished runs, all built from one table model (`tables`) over typed records:
Markdown (`markdown`, plus a terminal summary), self-contained HTML with plots (`html`, `plots`),
the profile section (`profile_section`), the attention and batching studies' sections (`studies`), the
conformance matrix (`conformance`), and exports to pytest-benchmark JSON and CSV (`export`)."""
