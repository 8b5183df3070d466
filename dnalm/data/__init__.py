"""Genome data: readers (FASTA, GenBank, GFF3/GTF), the token store, samplers and the length schedule.

Modules, in the order data flows through them:

- :mod:`dnalm.data.sequences`: ``read_sequences(path)`` yields ``SeqRecord`` (token ids + lower-case mask)
  from :mod:`dnalm.data.fasta` (plain/gzip/bgzip) or :mod:`dnalm.data.genbank` (via biopython).
- :mod:`dnalm.data.annotation`: ``read_annotations(path)`` reads GFF3/GTF into 0-based half-open
  ``Feature`` objects (``zero_based_starts=True`` for files with 0-based starts).
- :mod:`dnalm.data.store`: ``prepare(inputs, out, ...)`` writes a memory-mapped token store (what
  ``dnalm prepare`` runs); ``TokenStore.open(out)`` reads it.
- :mod:`dnalm.data.samplers`: random, genic, mixture and tiling samplers (rank-sharded, resumable).
- :mod:`dnalm.data.schedule`: ``LengthSchedule`` for sequence-length warm-up and context extension.

Every user mistake raises :class:`dnalm.data.errors.DataError` with the file, record and position.
"""

from dnalm.data.errors import DataError

__all__ = ["DataError"]
