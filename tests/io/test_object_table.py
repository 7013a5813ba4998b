import pytest

from dimalign.io.objects import ObjectTable, read_object_table


def test_plain_list_trailing_blank_lines(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_text("aardvark\nabacus\naccordion\n\n\n")

    assert read_object_table(path).object_ids == ("aardvark", "abacus", "accordion")


def test_plain_list_inner_blank_line_fails(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_text("aardvark\nabacus\n\naccordion\n")

    with pytest.raises(ValueError) as error:
        read_object_table(path)

    message = str(error.value)
    assert str(path) in message
    assert "line 3" in message
    assert "blank line" in message


def test_missing_table_names_file(tmp_path):
    path = tmp_path / "nope.tsv"

    with pytest.raises(FileNotFoundError) as error:
        read_object_table(path)

    assert f"object table {path} not found" in str(error.value)


def test_real_things_ids(things_dir):
    table = read_object_table(things_dir / "unique_id.txt")

    assert len(table.object_ids) == 1854
    assert table.object_ids[0] == "aardvark"


def test_folder_or_empty_file_is_not_a_table(tmp_path):
    with pytest.raises(ValueError, match=f"object table {tmp_path} is a folder"):
        read_object_table(tmp_path)
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="is empty: it must name one object per line"):
        read_object_table(tmp_path / "empty.txt")


def test_table_line_breaks_and_repeats(tmp_path):
    from dimalign.io.objects import ObjectTable, write_object_table

    table = ObjectTable(("a", "new\nline.jpg", "c"), ("", "new\nline.jpg", ""))
    write_object_table(table, tmp_path / "objects.tsv")
    assert read_object_table(tmp_path / "objects.tsv") == table
    (tmp_path / "ids.txt").write_text("a\nb\na\n")
    with pytest.raises(ValueError, match=r"ids.txt: object id 'a' appears twice \(rows 0 and 2\)"):
        read_object_table(tmp_path / "ids.txt")


def test_table_header_without_index_column(tmp_path):
    # A hand-written table with the columns object_id and source (any order,
    # extra columns ignored) is read by its header, not as names with tabs.
    path = tmp_path / "objects.tsv"
    path.write_text("source\tcategory\tobject_id\nimg0.png\tanimal\towl\nimg1.png\ttool\thammer\n")

    table = read_object_table(path)

    assert table.object_ids == ("owl", "hammer")
    assert table.sources == ("img0.png", "img1.png")


def test_table_row_missing_the_object_id(tmp_path):
    path = tmp_path / "objects.tsv"
    path.write_text("source\tobject_id\nimg0.png\towl\nimg1.png\n")

    with pytest.raises(ValueError, match=r"objects.tsv, line 3: no object_id field"):
        read_object_table(path)


def test_tab_in_plain_list_fails(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_text("owl\nhammer\timg1.png\n")

    with pytest.raises(ValueError, match=r"ids.txt, line 2: a tab in a list of object names"):
        read_object_table(path)


@pytest.mark.parametrize("text", ["index\tobject_id\tsource\n0\towl\t\n1\thammer\t\n", "owl\nhammer\n"])
def test_table_drops_byte_order_mark(tmp_path, text):
    path = tmp_path / "objects.tsv"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())

    assert read_object_table(path).object_ids == ("owl", "hammer")


def test_csv_file_without_object_id_column_fails(tmp_path):
    # THINGS words.csv and similar tables would otherwise give one object per
    # line of CSV text, header included.
    path = tmp_path / "words.csv"
    path.write_text("id,word,category\naardvark,aardvark,animal\n")

    with pytest.raises(ValueError, match=r"words.csv, line 1: a comma-separated table"):
        read_object_table(path)


def test_csv_table_with_object_id_column(tmp_path):
    path = tmp_path / "objects.csv"
    path.write_text('object_id,source\n"owl, barn",owl.jpg\nhammer,hammer.jpg\n')

    table = read_object_table(path)

    assert table.object_ids == ("owl, barn", "hammer")
    assert table.sources == ("owl.jpg", "hammer.jpg")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("object_id\tobject_id\nowl\tbarn owl\n",
         r"objects.tsv, line 1: the header names the column object_id twice \(columns 1 and 2\)"),
        ("index\tobject_id\tindex\n0\towl\t0\n",
         r"objects.tsv, line 1: the header names the column index twice \(columns 1 and 3\)"),
        ("object_id\tsource\n", r"objects.tsv lists no object: .*one row per object"),
        ("object_id\tsource\nowl\t\n\nhammer\t\n", r"objects.tsv, line 3: blank line in the table"),
        ("source\tobject_id\nowl.jpg\towl\nhammer.jpg\t\n", r"objects.tsv, line 3: empty object_id"),
        ("object_id\tsource\nowl\t\n  \t\n", r"objects.tsv, line 3: empty object_id"),
        ("object_id\tsource\nNew\tYork\tnew_york.jpg\n",
         r"objects.tsv, line 2: 3 fields, but the header names 2 columns; .* quoted, as in \"New<TAB>York\""),
        ('object_id\tsource\n"owl\t\nhammer\t\n', r"objects.tsv, line 2: .*quote"),
    ],
    ids=["repeated object_id", "repeated index", "header only", "inner blank line", "empty id",
         "blank id", "extra field", "unclosed quote"],
)
def test_table_rows_that_would_be_misread_fail(tmp_path, text, message):
    path = tmp_path / "objects.tsv"
    path.write_text(text)

    with pytest.raises(ValueError, match=message):
        read_object_table(path)


def test_table_trailing_empty_fields_accepted(tmp_path):
    # Spreadsheets end rows with empty fields and files with blank lines;
    # neither changes which object a row names.
    path = tmp_path / "objects.tsv"
    path.write_text("index\tobject_id\tsource\t\r\n0\towl\t\t\r\n1\thammer\t\t\t\r\n\r\n\r\n")

    table = read_object_table(path)

    assert table.object_ids == ("owl", "hammer")
    assert table.sources == ("", "")


@pytest.mark.parametrize("separator", ["\x85", "\x0c", "\u2028", "\x1e"])
def test_plain_list_splits_only_at_line_feeds(tmp_path, separator):
    # str.splitlines() also ends a line at NEL, form feed and other separators,
    # which would make one name two and move every later object down one row.
    path = tmp_path / "ids.txt"
    path.write_text(f"owl\nham{separator}mer\r\nbat\n", encoding="utf-8")

    table = read_object_table(path)

    assert table.object_ids == ("owl", f"ham{separator}mer", "bat")


def test_table_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_bytes(b"owl\ncaf\xe9\nbat\n")

    with pytest.raises(ValueError) as error:
        read_object_table(path)

    message = str(error.value)
    assert f"{path} is not UTF-8 text" in message
    assert "byte 0xe9 at offset 7" in message
    assert "save the table as UTF-8" in message


def test_table_not_utf8_offset_counts_bom(tmp_path):
    path = tmp_path / "ids.txt"
    # The byte order mark takes offsets 0 to 2, so 0xe9 is at offset 3 + 7 = 10.
    path.write_bytes(b"\xef\xbb\xbfowl\ncaf\xe9\nbat\n")

    with pytest.raises(ValueError) as error:
        read_object_table(path)

    assert "byte 0xe9 at offset 10" in str(error.value)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("objects.txt", "object_id,source\nowl,owl.jpg\nbat,bat.jpg\n"),
        ("objects.tsv", "index;object_id;source\n0;owl;\n1;bat;\n"),
        ("objects.txt", "index object_id source\n0 owl x\n1 bat y\n"),
    ],
    ids=["commas in .txt", "semicolons", "spaces"],
)
def test_table_other_delimiter_rejected(tmp_path, name, text):
    # Read as a list, the header line would become the first object.
    path = tmp_path / name
    path.write_text(text)

    with pytest.raises(ValueError, match=rf"{name}, line 1: .*header of a table.*object_id"):
        read_object_table(path)


def test_semicolon_csv_is_not_a_name_list(things_dir):
    # THINGS size_fixed.csv separates its columns by semicolons; read as a
    # list, its header line would become object 0 of 1,855.
    path = things_dir / "size_fixed.csv"

    with pytest.raises(ValueError, match=r"size_fixed.csv, line 1: a table separated by semicolons"):
        read_object_table(path)


@pytest.mark.parametrize(
    ("table", "message"),
    [(("a", ""), r"objects.tsv: row 1 has an empty object id; every row must name its object"),
     ((), r"objects.tsv: the object table is empty; it must name at least one object")],
)
def test_write_rejects_table_that_read_would_reject(tmp_path, table, message):
    from dimalign.io.objects import ObjectTable, write_object_table

    with pytest.raises(ValueError, match=message):
        write_object_table(ObjectTable(table), tmp_path / "objects.tsv")
    assert list(tmp_path.iterdir()) == []


def test_write_read_round_trip_keeps_ids_and_sources(tmp_path):
    from dimalign.io.objects import ObjectTable, write_object_table

    table = ObjectTable((" leading space", "tab\tinside", "line\nbreak", "comma,id"), ("a.png", "", "c d.jpg", ""))
    write_object_table(table, tmp_path / "objects.tsv")
    assert read_object_table(tmp_path / "objects.tsv") == table


def test_find_image_matches_upper_case_extension(tmp_path):
    from dimalign.io.objects import find_image

    (tmp_path / "cat.JPG").write_bytes(b"x")
    (tmp_path / "dog.Png").write_bytes(b"x")
    (tmp_path / "aardvark").mkdir()
    (tmp_path / "aardvark" / "aardvark_01.JPEG").write_bytes(b"x")

    assert find_image(tmp_path, "cat") == tmp_path / "cat.JPG"
    assert find_image(tmp_path, "dog") == tmp_path / "dog.Png"
    assert find_image(tmp_path, "aardvark") == tmp_path / "aardvark" / "aardvark_01.JPEG"
    assert find_image(tmp_path, "emu") is None


def test_find_image_skips_hidden_files(tmp_path):
    from dimalign.io.objects import find_image

    # macOS writes AppleDouble files (._name) and .DS_Store next to copied photos.
    (tmp_path / "aardvark").mkdir()
    (tmp_path / "aardvark" / "._aardvark_01.jpg").write_bytes(b"\x00\x05\x16\x07")
    (tmp_path / "aardvark" / ".DS_Store").write_bytes(b"x")
    (tmp_path / "aardvark" / "aardvark_01.jpg").write_bytes(b"x")

    assert find_image(tmp_path, "aardvark") == tmp_path / "aardvark" / "aardvark_01.jpg"


def test_repr_abbreviates_long_table(things_dir):
    """A notebook shows the repr, which lists the first and last three ids of a long table."""
    table = read_object_table(things_dir / "unique_id.txt")
    assert repr(table) == (
        "ObjectTable(n_objects=1854, object_ids=('aardvark', 'abacus', 'accordion', ..., "
        "'zebra', 'zipper', 'zucchini'))"
    )


def test_repr_lists_short_table():
    assert repr(ObjectTable(("cat", "dog"))) == "ObjectTable(n_objects=2, object_ids=('cat', 'dog'))"
    with_sources = ObjectTable(("cat", "dog"), ("cat.jpg", ""))
    assert repr(with_sources) == (
        "ObjectTable(n_objects=2, object_ids=('cat', 'dog'), sources=('cat.jpg', ''))"
    )


@pytest.mark.parametrize("name, text, number, line", [
    ("ids.txt", "# THINGS ids\nowl\nhammer\n", 1, "# THINGS ids"),
    ("ids.txt", "owl\n  # rest\nhammer\n", 2, "# rest"),
    ("objects.tsv", "# written by hand\nindex\tobject_id\n0\towl\n", 1, "# written by hand"),
])
def test_comment_line_rejected(tmp_path, name, text, number, line):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")

    with pytest.raises(ValueError) as caught:
        read_object_table(path)

    assert str(caught.value) == (
        f"{path}, line {number}: {line!r} starts with #, but object tables have no comments, so it "
        "would become an object's name and move every later object down one row. Remove the line"
    )
