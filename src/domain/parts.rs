//! A database backed up in parts, all dumped in one exported snapshot: the pure planner that
//! splits a database into a schema part, bin-packed data parts and ctid-range COPY parts of one
//! huge table, over the part types of the set manifest (re-exported from `domain::manifest::set`).
//!
//! See DESIGN.md "Manifest format version 3 (parts)". Nothing here does I/O: the coordinator
//! (`features::backup::parts`) reads the catalog in the snapshot and hands it to [`plan`].

pub use crate::domain::manifest::set::*;

// ---- the planner -------------------------------------------------------------------------------

/// A relation with data, as read from the catalog in the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogTable {
    pub table: TableRef,
    /// On-disk size (heap + TOAST), bytes.
    pub bytes: u64,
    /// Heap pages (`pg_relation_size / block_size`), for ctid ranges.
    pub pages: u64,
    /// Columns pg_dump copies (not dropped, not generated), in order.
    pub columns: Vec<String>,
    /// Sequences owned by the table (serial and identity), which `pg_dump -t` brings along.
    pub owned_sequences: Vec<TableRef>,
}

/// What the planner reads: the relations with data, sequences, large objects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    pub tables: Vec<CatalogTable>,
    pub sequences: Vec<SequenceRef>,
    pub large_objects: bool,
}

impl Catalog {
    pub fn total_bytes(&self) -> u64 {
        self.tables.iter().map(|t| t.bytes).sum()
    }
}

/// Planner knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanOptions {
    /// Data parts to aim for (the parts that can run at once).
    pub data_parts: usize,
    /// A table is split into COPY parts when it is larger than this factor times the fair share
    /// of one part (`total / data_parts`); each piece is about one fair share.
    pub split_factor: u64,
    /// Never split a table of fewer pages than this (a range per few pages is pure overhead).
    pub min_split_pages: u64,
}

impl Default for PlanOptions {
    fn default() -> Self {
        Self { data_parts: 2, split_factor: 1, min_split_pages: 2 }
    }
}

/// The parts of one backup, with a reason for each choice a reader might wonder about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub parts: Vec<PartSpec>,
    pub reasons: Vec<String>,
}

/// Split a database into one schema part, up to `data_parts` data parts bin-packed by size
/// (largest first, each to the least-loaded part), and COPY parts for a table larger than a fair
/// share. Large objects go to the first data part, sequence values to exactly one part (the
/// first data part too). Deterministic: the same catalog gives the same plan.
pub fn plan(catalog: &Catalog, opts: PlanOptions) -> Plan {
    let n = opts.data_parts.max(1);
    let mut reasons = Vec::new();
    let mut parts = vec![PartSpec::new("schema".into(), PartKind::Schema)];
    let total = catalog.total_bytes();
    let share = total.div_ceil(n as u64).max(1);

    let mut tables: Vec<&CatalogTable> = catalog.tables.iter().collect();
    // Largest first, then by name, so ties are stable.
    tables.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.table.cmp(&b.table)));

    let mut copies = Vec::new();
    let mut whole = Vec::new();
    for t in tables {
        let huge = n > 1
            && t.bytes > share.saturating_mul(opts.split_factor.max(1))
            && t.pages >= opts.min_split_pages.max(2)
            && !t.columns.is_empty();
        if huge {
            let pieces = (t.bytes.div_ceil(share) as usize).clamp(2, t.pages as usize);
            let step = t.pages.div_ceil(pieces as u64).max(1);
            reasons.push(format!(
                "table {} ({} bytes, {} pages) is larger than a fair share of {share} bytes: split into {pieces} page ranges of {step} pages",
                t.table, t.bytes, t.pages
            ));
            let mut from = 0;
            for i in 0..pieces {
                let last = i + 1 == pieces;
                let to = if last { None } else { Some(from + step) };
                copies.push((t, CtidRange { from_page: from, to_page: to }));
                from += step;
            }
        } else {
            whole.push(t);
        }
    }

    // Bin-pack whole tables (largest first into the least-loaded bin).
    let bins = n.min(whole.len()).max(1);
    let mut load = vec![0u64; bins];
    let mut members: Vec<Vec<&CatalogTable>> = vec![Vec::new(); bins];
    for t in whole {
        let (i, _) = load.iter().enumerate().min_by_key(|(i, l)| (**l, *i)).expect("at least one bin");
        load[i] += t.bytes;
        members[i].push(t);
    }
    let mut data: Vec<PartSpec> = Vec::new();
    for m in members {
        if m.is_empty() {
            continue;
        }
        let mut p = PartSpec::new(String::new(), PartKind::Data);
        let mut tables: Vec<TableRef> = m.iter().map(|t| t.table.clone()).collect();
        tables.sort();
        let mut owned: Vec<TableRef> = m.iter().flat_map(|t| t.owned_sequences.iter().cloned()).collect();
        owned.sort();
        owned.dedup();
        p.tables = tables;
        p.exclude_sequences = owned;
        data.push(p);
    }
    if data.is_empty() && (catalog.large_objects || !catalog.sequences.is_empty()) {
        data.push(PartSpec::new(String::new(), PartKind::Data));
    }
    if let Some(first) = data.first_mut() {
        if catalog.large_objects {
            first.large_objects = true;
        }
        if !catalog.sequences.is_empty() {
            first.sequences = true;
            let mut seqs = catalog.sequences.clone();
            seqs.sort();
            // Its own owned sequences are named now, so not excluded.
            first.exclude_sequences.retain(|s| !seqs.iter().any(|q| &q.sequence == s));
            first.sequence_list = seqs;
        }
    }
    for (i, mut p) in data.into_iter().enumerate() {
        p.name = format!("data-{:02}", i + 1);
        parts.push(p);
    }
    for (i, (t, range)) in copies.into_iter().enumerate() {
        let mut p = PartSpec::new(format!("copy-{:02}", i + 1), PartKind::Copy);
        p.table = Some(t.table.clone());
        p.columns = t.columns.clone();
        p.ctid_range = Some(range);
        parts.push(p);
    }
    // A split table's owned sequences still come from the sequence part; nothing to exclude
    // since no data part names the table.
    Plan { parts, reasons }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::manifest::Block;

    fn table(name: &str, bytes: u64) -> CatalogTable {
        CatalogTable {
            table: TableRef::new("public", name),
            bytes,
            pages: bytes / 8192,
            columns: vec!["id".into(), "v".into()],
            owned_sequences: vec![],
        }
    }

    fn all_tables(p: &Plan) -> Vec<TableRef> {
        let mut v: Vec<TableRef> = p.parts.iter().flat_map(|p| p.tables.clone()).collect();
        v.sort();
        v
    }

    #[test]
    fn bin_packs_whole_tables_and_names_every_table_once() {
        let cat = Catalog {
            tables: vec![table("a", 800_000), table("b", 700_000), table("c", 300_000), table("d", 200_000)],
            sequences: vec![SequenceRef { sequence: TableRef::new("public", "s"), identity_of: None }],
            large_objects: true,
        };
        let p = plan(&cat, PlanOptions { data_parts: 2, ..Default::default() });
        let names: Vec<&str> = p.parts.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["schema", "data-01", "data-02"]);
        assert_eq!(all_tables(&p).len(), 4);
        // a (800k) + d (200k) against b (700k) + c (300k): balanced.
        let loads: Vec<u64> = p.parts[1..]
            .iter()
            .map(|part| part.tables.iter().map(|t| cat.tables.iter().find(|c| &c.table == t).unwrap().bytes).sum())
            .collect();
        assert_eq!(loads, [1_000_000, 1_000_000]);
        assert_eq!(p.parts.iter().filter(|p| p.large_objects).count(), 1);
        assert_eq!(p.parts.iter().filter(|p| p.sequences).count(), 1);
        assert!(p.reasons.is_empty());
    }

    #[test]
    fn a_huge_table_is_split_into_page_ranges_the_last_one_open() {
        let cat = Catalog {
            tables: vec![table("huge", 8192 * 1000), table("small", 8192 * 10)],
            sequences: vec![],
            large_objects: false,
        };
        let p = plan(&cat, PlanOptions { data_parts: 2, ..Default::default() });
        let copies: Vec<&PartSpec> = p.parts.iter().filter(|p| p.kind == PartKind::Copy).collect();
        assert_eq!(copies.len(), 2, "{p:?}");
        assert_eq!(copies[0].ctid_range, Some(CtidRange { from_page: 0, to_page: Some(500) }));
        assert_eq!(copies[1].ctid_range, Some(CtidRange { from_page: 500, to_page: None }));
        assert_eq!(
            copies[0].copy_sql().unwrap(),
            "COPY (SELECT \"id\", \"v\" FROM ONLY \"public\".\"huge\" WHERE ctid >= '(0,0)'::tid AND ctid < '(500,0)'::tid) TO STDOUT"
        );
        assert_eq!(all_tables(&p), vec![TableRef::new("public", "small")], "the split table is in no data part");
        assert_eq!(p.reasons.len(), 1);
        assert!(p.reasons[0].contains("public.huge"), "{}", p.reasons[0]);
    }

    #[test]
    fn one_data_part_never_splits_and_an_empty_database_has_only_the_schema() {
        let cat = Catalog { tables: vec![table("huge", 8192 * 1000), table("s", 8192)], ..Default::default() };
        let p = plan(&cat, PlanOptions { data_parts: 1, ..Default::default() });
        assert!(p.parts.iter().all(|p| p.kind != PartKind::Copy));
        let p = plan(&Catalog::default(), PlanOptions::default());
        assert_eq!(p.parts.len(), 1);
        assert_eq!(p.parts[0].kind, PartKind::Schema);
    }

    #[test]
    fn large_objects_alone_get_a_part_that_names_no_table() {
        let cat = Catalog { large_objects: true, ..Default::default() };
        let p = plan(&cat, PlanOptions::default());
        let args = p.parts[1].pg_dump_args().unwrap();
        assert_eq!(args, ["--data-only", "--exclude-table-data=*.*", "--blobs"]);
    }

    #[test]
    fn owned_sequences_are_excluded_where_the_sequence_part_is_not() {
        // a: identity (only selectable through its table); b: serial.
        let mut a = table("a", 1000);
        a.owned_sequences = vec![TableRef::new("public", "a_id_seq")];
        let mut b = table("b", 900);
        b.owned_sequences = vec![TableRef::new("public", "b_id_seq")];
        let cat = Catalog {
            tables: vec![a, b],
            sequences: vec![
                SequenceRef {
                    sequence: TableRef::new("public", "a_id_seq"),
                    identity_of: Some(TableRef::new("public", "a")),
                },
                SequenceRef { sequence: TableRef::new("public", "b_id_seq"), identity_of: None },
            ],
            large_objects: false,
        };
        let p = plan(&cat, PlanOptions::default());
        let seq_part = p.parts.iter().find(|p| p.sequences).unwrap();
        assert!(seq_part.exclude_sequences.is_empty());
        assert_eq!(seq_part.sequence_list.len(), 2);
        assert_eq!(seq_part.tables, [TableRef::new("public", "a")], "the larger table is packed first");
        // a's identity sequence comes with a's rows; b's serial sequence is named.
        assert_eq!(
            seq_part.pg_dump_args().unwrap(),
            ["--data-only", "--table=\"public\".\"a\"", "--table=\"public\".\"b_id_seq\""]
        );
        let other = p.parts.iter().find(|p| p.kind == PartKind::Data && !p.sequences).unwrap();
        assert_eq!(
            other.pg_dump_args().unwrap(),
            ["--data-only", "--table=\"public\".\"b\"", "--exclude-table-data=\"public\".\"b_id_seq\""]
        );
        // An identity sequence whose table's rows are in another part: the table is named and its
        // rows excluded.
        let mut lone = PartSpec::new("data-01".into(), PartKind::Data);
        lone.sequence_list = vec![cat.sequences[0].clone()];
        assert_eq!(
            lone.pg_dump_args().unwrap(),
            ["--data-only", "--table=\"public\".\"a\"", "--exclude-table-data=\"public\".\"a\""]
        );
    }

    #[test]
    fn patterns_quote_every_name_literally() {
        let t = TableRef::new("we\"ird", "a.b*");
        assert_eq!(t.pattern(), "\"we\"\"ird\".\"a.b*\"");
    }

    #[test]
    fn a_part_round_trips_through_json() {
        let mut spec = PartSpec::new("copy-01".into(), PartKind::Copy);
        spec.table = Some(TableRef::new("public", "t"));
        spec.columns = vec!["id".into()];
        spec.ctid_range = Some(CtidRange { from_page: 0, to_page: Some(4) });
        let part = Part {
            spec,
            data_blob: "s/d/x.1234abcd.copy-01.copy.zst".into(),
            raw_bytes: 3,
            stored_bytes: 1,
            sha256: "00".into(),
            blocks: vec![Block { size: 1, sha256: "00".into() }],
            snapshot: "00000003-00000002-1".into(),
            archive_format: ARCHIVE_COPY_TEXT.into(),
            command: vec!["COPY …".into()],
            row_counts: None,
            archive_index: None,
            restore_hint: String::new(),
        };
        let json = serde_json::to_string(&part).unwrap();
        assert!(json.contains("\"kind\":\"copy\""), "{json}");
        assert_eq!(serde_json::from_str::<Part>(&json).unwrap(), part);
        part.check_consistent("x", "00000003-00000002-1").unwrap();
        let e = part.check_consistent("x", "other").unwrap_err();
        assert!(e.to_string().contains("not the set's"), "{e}");
    }
}
