"""The commands of the README and docs/ name files that exist and flags their scripts take: a renamed flag would
otherwise break a user's copy of the ImageNet recipe only once it reaches a GPU."""
import functools
import os
import re

import pytest

from conftest import REPO, run

DOCUMENTS = ['README.md'] + [os.path.join('docs', f) for f in sorted(os.listdir(os.path.join(REPO, 'docs')))
                             if f.endswith('.md')]
SCRIPT = re.compile(r'(?:^|\s)((?:scripts/)?\w+\.(?:py|sh))(?=\s|$)')
LAUNCHER_FLAGS = {'--index-url', '--no-deps', '--nproc_per_node', '--help'}  # pip's and torchrun's; every script's
SYSTEM_SETTINGS = {'CUDA_VISIBLE_DEVICES', 'OMP_NUM_THREADS'}  # read by torch and the OpenMP runtime, not a script


@functools.cache  # each file is read for every command that runs it
def read(document):
    with open(os.path.join(REPO, document)) as f:
        return f.read()


def commands(document):
    """The document's shell commands: the lines of its fenced code blocks and the indented lines that start one
    (continuations joined, comments dropped), and each inline code span that runs a script (`scripts/cifar10.sh`
    alone names a file, not a command)."""
    text = re.sub(r'\\\n\s*', ' ', read(document))
    fenced = [line for block in re.findall(r'```(?:bash)?\n(.*?)```', text, re.S) for line in block.splitlines()]
    indented = re.findall(r'^ {4,}((?:python|torchrun|bash|[A-Z_]+=)\S*\s.*)$', re.sub(r'```.*?```', '', text, flags=re.S),
                          re.M)
    spans = [span for span in re.findall(r'`([^`\n]+)`', text) if SCRIPT.search(span) and ' ' in span.strip()]
    return [line.split(' #')[0] for line in fenced + indented if line.strip() and not line.lstrip().startswith('#')] + spans


def scripts_and_flags(document):
    """[(script, its subcommand or None, the --flags that follow it)] of the document's commands."""
    found = []
    for command in commands(document):
        match = SCRIPT.search(command)
        if match:
            script, words = match.group(1), command[match.end():].split()
            subcommand = words[0] if words and script.endswith('.py') and 'add_subparsers' in read(script) else None
            flags = {w.split('=')[0] for w in words if re.fullmatch(r'--\w+(=\S*)?', w)}
            found.append((script, subcommand, flags))
    return found


@functools.cache
def help_of(script, subcommand=None):
    return run(script, *([subcommand] if subcommand else []), '--help', in_process=True).stdout


def taken(flag, help_text):
    return re.search(rf'(?<![\w-]){flag}(?![\w-])', help_text) is not None


def test_the_readme_runs_the_pipeline_s_scripts():
    assert {'train_tok.py', 'train_gen.py', 'sample.py', 'fid.py', 'scripts/quickstart.sh'} <= {
        script for script, _, _ in scripts_and_flags('README.md')}


@pytest.mark.parametrize('document', DOCUMENTS)
def test_every_command_runs_a_script_that_exists_with_flags_it_takes(document):
    for script, subcommand, flags in scripts_and_flags(document):
        assert os.path.isfile(os.path.join(REPO, script)), f'{document} runs {script}, which does not exist'
        if script.endswith('.py') and flags:
            unknown = sorted(f for f in flags if not taken(f, help_of(script, subcommand)))
            assert not unknown, f'{document} passes {script} {subcommand or ""} flags it does not take: {unknown}'


@pytest.mark.parametrize('document', DOCUMENTS)
def test_every_script_the_document_names_exists(document):
    missing = sorted(s for s in set(re.findall(r'scripts/\w+\.(?:sh|py)', read(document)))
                     if not os.path.isfile(os.path.join(REPO, s)))
    assert not missing, f'{document} names scripts that do not exist: {missing}'


def script_texts(script, seen):
    """The text of a scripts/ file and of every scripts/ file it runs or sources, each once."""
    if script in seen or not os.path.isfile(os.path.join(REPO, script)):
        return ''
    seen.add(script)
    text = read(script)
    return text + ''.join(script_texts(os.path.join('scripts', name), seen)
                          for name in sorted(set(re.findall(r'\b(\w+\.sh)\b', text))))


@pytest.mark.parametrize('document', DOCUMENTS)
def test_every_setting_a_command_gives_a_script_is_one_the_script_reads(document):
    # bash ignores a variable that nothing reads: a renamed setting would run the default without a word
    for command in commands(document):
        match = re.search(r'((?:[A-Z_][A-Z0-9_]*=\S*\s+)+)bash\s+(scripts/\w+\.sh)', command)
        if not match or re.search(r'git (worktree|checkout)', command):  # another commit's scripts
            continue
        text = script_texts(match.group(2), set())
        unread = sorted(v for v in re.findall(r'([A-Z_][A-Z0-9_]*)=', match.group(1))
                        if v not in SYSTEM_SETTINGS and not re.search(rf'\b{v}\b', text))
        assert not unread, f'{document} sets {unread}, which {match.group(2)} does not read: {command.strip()}'


def test_every_flag_the_readme_names_is_taken_by_one_of_the_scripts_it_names():
    # the prose names flags without their script (`--full_prefix_prob 0.5`, `--resume`)
    text = read('README.md')
    scripts = sorted({s for s in re.findall(r'(?:scripts/)?\w+\.py', text) if os.path.isfile(os.path.join(REPO, s))
                      and 'argparse' in read(s)})
    unknown = sorted(f for f in set(re.findall(r'--[a-z][\w-]*', text)) - LAUNCHER_FLAGS
                     if not any(taken(f, help_of(s)) for s in scripts))
    assert not unknown, f'the README names flags that none of {scripts} takes: {unknown}'
