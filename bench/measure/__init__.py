"""What a case measures, each in its own module: latency (`latency`) and the repetition stop rule (`policy`),
perplexity (`perplexity`), quality against the reference (`quality`; its log-probabilities cached by
`refcache`), memory (`memory`), bandwidth (`bandwidth`, MBU), the KV cache's bytes (`kvcache`), energy
(`energy`), the machine's load and clocks (`machine`), profiling (`profiling`); `stats` derives every summary
from raw samples (intervals by `bootstrap`), and `evaltext` names the evaluation texts."""
