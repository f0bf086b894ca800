//! `ci completions SHELL` and `ci man`: generated from the same clap definitions as the
//! parser, so they cannot drift from it.

use clap::CommandFactory;

use crate::exit;

#[derive(clap::Args, Debug)]
pub struct CompletionsArgs {
    /// The shell: bash (`ci completions bash > ~/.local/share/bash-completion/completions/ci`),
    /// zsh (`ci completions zsh > ~/.zfunc/_ci`), fish
    /// (`ci completions fish > ~/.config/fish/completions/ci.fish`).
    pub shell: Shell,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// The completion script of `shell`.
pub fn script(shell: Shell) -> Vec<u8> {
    let generator = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut out = Vec::new();
    clap_complete::generate(generator, &mut crate::Cli::command(), "ci", &mut out);
    out
}

pub fn run(args: CompletionsArgs) -> anyhow::Result<u8> {
    use std::io::Write;
    std::io::stdout().write_all(&script(args.shell))?;
    Ok(exit::SUCCESS)
}

/// The man page, in roff: `ci(1)`, its options and a line per subcommand.
pub fn page() -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    clap_mangen::Man::new(crate::Cli::command()).render(&mut out)?;
    // `.TH` first, as man(7) has it and as `file` and the tests know a page by; clap_mangen
    // puts the definition of the apostrophe string before it, which roff takes anywhere
    // before its first use.
    let text = String::from_utf8(out)?;
    let (th, rest): (Vec<&str>, Vec<&str>) = text.lines().partition(|l| l.starts_with(".TH "));
    let mut page = th.join("\n");
    for line in rest {
        page.push('\n');
        page.push_str(line);
    }
    page.push('\n');
    Ok(page.into_bytes())
}

pub fn man() -> anyhow::Result<u8> {
    use std::io::Write;
    std::io::stdout().write_all(&page()?)?;
    Ok(exit::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subcommands() -> Vec<String> {
        crate::Cli::command()
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
            .map(|s| s.get_name().to_string())
            .collect()
    }

    #[test]
    fn every_shell_names_every_subcommand() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let text = String::from_utf8(script(shell)).unwrap();
            for sub in subcommands() {
                assert!(text.contains(&sub), "{shell:?} lacks {sub}");
            }
        }
    }

    #[test]
    fn the_man_page_names_every_subcommand() {
        let page = String::from_utf8(page().unwrap()).unwrap();
        assert!(page.starts_with(".TH"), "{}", &page[..40]);
        for sub in subcommands() {
            assert!(
                page.contains(&format!("ci\\-{sub}")) || page.contains(&sub),
                "{sub}"
            );
        }
    }
}
