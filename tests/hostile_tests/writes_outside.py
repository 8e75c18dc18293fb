def test_writes_outside_the_workspace():
    with open("{outside}", "w") as f:
        f.write("escaped")
