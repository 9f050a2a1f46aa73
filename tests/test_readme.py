"""The README's commands name files that exist and flags their scripts take: a renamed flag would otherwise break a
user's copy of the ImageNet recipe only once it reaches a GPU."""
import os
import re

import pytest

from conftest import REPO, run

SCRIPT = re.compile(r'(?:^|\s)((?:scripts/)?\w+\.(?:py|sh))(?=\s|$)')


def readme_commands():
    """The README's shell commands: each line of its bash blocks (continuations joined, comments dropped) and each
    inline code span that runs a script."""
    with open(os.path.join(REPO, 'README.md')) as f:
        text = f.read()
    commands = []
    for block in re.findall(r'```bash\n(.*?)```', text, re.S):
        commands += [line.split(' #')[0] for line in re.sub(r'\\\n\s*', ' ', block).splitlines()
                     if line.strip() and not line.lstrip().startswith('#')]
    # a span that runs a script names it and more: `scripts/cifar10.sh` alone is a file, not a command
    commands += [span for span in re.findall(r'`([^`\n]+)`', text) if SCRIPT.search(span) and ' ' in span.strip()]
    return commands


def flags_by_script():
    """{script: the --flags that follow it in some README command}, and every script a command names."""
    flags, scripts = {}, set()
    for command in readme_commands():
        match = SCRIPT.search(command)
        if not match:
            continue
        script = match.group(1)
        scripts.add(script)
        words = command[match.end():].split()
        flags.setdefault(script, set()).update(w.split('=')[0] for w in words if re.fullmatch(r'--\w+(=\S*)?', w))
    return flags, scripts


def test_the_readme_runs_scripts_that_exist():
    _, scripts = flags_by_script()
    assert {'train_tok.py', 'train_gen.py', 'sample.py', 'fid.py', 'scripts/quickstart.sh'} <= scripts
    for script in scripts:
        assert os.path.isfile(os.path.join(REPO, script)), f'the README runs {script}, which does not exist'


def help_of(script):
    return run(script, '--help', in_process=True).stdout


def taken(flag, help_text):
    return re.search(rf'(?<![\w-]){flag}(?![\w-])', help_text) is not None


@pytest.mark.parametrize('script', sorted(s for s, f in flags_by_script()[0].items() if s.endswith('.py') and f))
def test_every_flag_in_the_readme_is_one_its_script_takes(script):
    help_text = help_of(script)
    unknown = sorted(f for f in flags_by_script()[0][script] if not taken(f, help_text))
    assert not unknown, f'the README passes {script} flags it does not take: {unknown}'


def test_every_flag_the_readme_names_is_taken_by_one_of_the_scripts_it_names():
    # the prose names flags without their script (`--full_prefix_prob 0.5`, `--resume`)
    with open(os.path.join(REPO, 'README.md')) as f:
        text = f.read()
    launchers = {'--index-url', '--no-deps', '--nproc_per_node', '--help'}  # pip's and torchrun's; every script's
    scripts = sorted({s for s in re.findall(r'(?:scripts/)?\w+\.py', text) if os.path.isfile(os.path.join(REPO, s))})
    help_texts = [help_of(s) for s in scripts if 'argparse' in open(os.path.join(REPO, s)).read()]
    unknown = sorted(f for f in set(re.findall(r'--[a-z][\w-]*', text)) - launchers
                     if not any(taken(f, h) for h in help_texts))
    assert not unknown, f'the README names flags that none of {scripts} takes: {unknown}'
