//! The `sd` command-line interface.

fn main() {
    println!("sd");
}
