"""Genome data: readers (FASTA, GenBank, GFF3/GTF), the token store, samplers and the length schedule."""
