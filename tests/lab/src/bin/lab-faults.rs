//! `make faults`: the long fault campaign (see `lab::faults`). Prints what
//! it injected and what the clients saw; exits non-zero if any data was
//! wrong, any request lost or the system crashed.
//!
//!   lab-faults [--seed S] [--faults N] [--rounds R] [--rate N] [--kinds K+K…] [--no-outside]

use lab::faults::{run, Campaign, LOSSLESS_KINDS};

fn main() {
    let mut c = Campaign {
        name: "faults".to_owned(),
        seed: 1,
        faults: 300,
        rounds: 400,
        rate: 20_000,
        kinds: LOSSLESS_KINDS.to_owned(),
        outside: true,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    let usage = || -> ! {
        eprintln!("usage: lab-faults [--seed S] [--faults N] [--rounds R] [--rate N] [--kinds K+K…] [--no-outside]");
        std::process::exit(2)
    };
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--no-outside" => {
                c.outside = false;
                continue;
            }
            "--kinds" => {
                c.kinds = it.next().cloned().unwrap_or_else(|| usage());
                continue;
            }
            _ => {}
        }
        let value = it.next().and_then(|v| v.parse::<u64>().ok());
        match (flag.as_str(), value) {
            ("--seed", Some(v)) => c.seed = v,
            ("--faults", Some(v)) => c.faults = v as usize,
            ("--rounds", Some(v)) => c.rounds = v as usize,
            ("--rate", Some(v)) if v > 0 => c.rate = v,
            _ => usage(),
        }
    }
    println!(
        "seed {}, rate 1/{}, up to {} faults in {} rounds",
        c.seed, c.rate, c.faults, c.rounds
    );
    match run(&c) {
        Ok(r) => {
            r.print();
            if r.mismatches + r.lost + r.crashes > 0 {
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("lab-faults: {e}");
            std::process::exit(1);
        }
    }
}
