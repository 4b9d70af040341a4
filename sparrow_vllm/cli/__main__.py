"""`python -m sparrow_vllm.cli`: the same as the `sparrow-vllm` command."""

from sparrow_vllm.cli.main import main

if __name__ == "__main__":
    main()
